variable "cohort" {
  type        = string
  description = "Cohort name from the roster."
}

variable "network" {
  type = object({
    bridge  = string
    cidr    = string
    gateway = string
  })
  description = "The cohort's bridge, /24 and gateway address."
}

variable "hosts" {
  type = map(object({
    address   = string
    student   = string
    role      = string
    scenario  = string
    etc_hosts = map(string)
  }))
  description = "Lab hosts keyed by host name."
}

variable "labkit_command" {
  type        = string
  description = "Absolute path of the labkit executable."
}

variable "ssh_private_key_file" {
  type        = string
  description = "Controller key authorized for root on the lab hosts."
}

variable "bastion" {
  type = object({
    address  = string
    scenario = string
  })
  default     = null
  description = "The cohort's bastion host, or null for none."
}
