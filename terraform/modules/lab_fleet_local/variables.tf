variable "cohort" {
  type        = string
  description = "Cohort name from the roster; prefixes every host name."
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,20}$", var.cohort))
    error_message = "cohort must be 1-21 characters: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "network" {
  type = object({
    bridge  = string
    cidr    = string
    gateway = string
  })
  description = "The cohort's bridge, its /24 and the gateway address (also the package service), allocated by labkit."
  validation {
    condition     = can(cidrhost(var.network.cidr, 1)) && length(var.network.bridge) <= 15
    error_message = "network.cidr must be a CIDR block and network.bridge an interface name of at most 15 characters."
  }
}

variable "hosts" {
  type = map(object({
    address   = string
    student   = string
    role      = string
    scenario  = string
    etc_hosts = map(string)
  }))
  description = "Lab hosts keyed by host name (<cohort>-<student>-<role>); addresses are allocated once and kept."
}

variable "labkit_command" {
  type        = string
  description = "Absolute path of the labkit executable the provisioners call."
}

variable "ssh_private_key_file" {
  type        = string
  description = "Controller key authorized for the admin user on every lab host (its .pub must exist beside it)."
}

variable "ssh_user" {
  type        = string
  default     = "admin"
  description = "User Ansible and the graders connect as."
}

variable "bastion" {
  type = object({
    address  = string
    scenario = string
  })
  default     = null
  description = "The cohort's bastion host (its address on the cohort's bridge), or null for none."
}
