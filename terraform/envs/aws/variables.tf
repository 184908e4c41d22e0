variable "region" {
  type        = string
  description = "AWS region of the cohort (roster aws.region), e.g. eu-west-1."

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-\\d$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "cohort" {
  type        = string
  description = "Cohort name from the roster."
}

variable "scenario" {
  type        = string
  description = "Scenario folder name under scenarios/."
}

variable "roles" {
  type        = list(string)
  description = "Host roles of one lab, from the scenario topology."
}

variable "students" {
  type = map(object({
    name           = string
    ssh_public_key = string
  }))
  description = "Students keyed by roster id: display name and OpenSSH public key line."
}

variable "expires_at" {
  type        = string
  description = "ISO 8601 UTC time after which the reaper may tear the cohort down; null never expires."
  default     = null
}

variable "instance_type" {
  type        = string
  description = "EC2 instance type of every lab host (roster aws.instance_type)."
}

variable "architecture" {
  type        = string
  description = "CPU architecture of instance_type (x86_64 or arm64), for the Debian image lookup."
  default     = "x86_64"
}

variable "ami_id" {
  type        = string
  description = "AMI of every lab host; null looks up the newest official Debian 12 image."
  default     = null
}

variable "availability_zone" {
  type        = string
  description = "Zone of the lab subnet; preflight picks one where instance_type is offered."
  default     = null
}

variable "allowed_ssh_cidrs" {
  type        = list(string)
  description = "IPv4 networks allowed to ssh to the lab hosts (roster aws.allowed_ssh_cidrs)."
}

variable "controller_cidrs" {
  type        = list(string)
  default     = []
  description = "IPv4 networks of the controller (roster aws.controller_cidrs): the only outside source of the lab ports."
}

variable "controller_ports" {
  type        = list(number)
  default     = [22, 5555, 5672, 6379, 15672]
  description = "TCP ports the controller reaches on lab hosts (labkit: the scenario's components and grading ports)."
}

variable "load_generator_instance_type" {
  type        = string
  default     = null
  description = "Instance type of the cohort's load-generator host (roster aws.load_generator), or null for none."
}

variable "controller_ssh_public_key" {
  type        = string
  description = "Public half of the cohort controller key (inventories/<cohort>/.ssh/id_ed25519.pub)."
}

variable "ssh_private_key_file" {
  type        = string
  description = "Path of the cohort controller's private key, written into lab_hosts for Ansible."
}

variable "ssh_user" {
  type        = string
  description = "Login user of the image; \"admin\" on the official Debian AMIs."
  default     = "admin"

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.ssh_user))
    error_message = "ssh_user must be a Linux user name such as admin."
  }
}
