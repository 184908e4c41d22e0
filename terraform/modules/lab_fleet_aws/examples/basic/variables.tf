variable "controller_ssh_public_key" {
  type        = string
  description = "Public key Ansible uses on the hosts (one OpenSSH line)."
}

variable "student_keys" {
  type        = map(string)
  description = "One OpenSSH public key line per student id (s01, s02)."
}
