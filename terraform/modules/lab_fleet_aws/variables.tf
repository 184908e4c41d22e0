variable "cohort" {
  type        = string
  description = "Cohort name from the roster (inventories/<cohort>/cohort.yml); prefixes every resource name and is the `cohort` tag the sweep and reaper select on."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,20}$", var.cohort))
    error_message = "cohort must be 1-21 characters: lower-case letters, digits and '-', starting with a letter (e.g. \"spring26\")."
  }
}

variable "scenario" {
  type        = string
  description = "Scenario folder name under scenarios/ (e.g. \"queue-segregation\"); written to the `scenario` tag."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*$", var.scenario))
    error_message = "scenario must be a scenario folder name: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "roles" {
  type        = list(string)
  description = "Host roles of one lab, from the scenario topology (e.g. [\"broker\", \"worker\"]); every student gets one instance per role."

  validation {
    condition     = length(var.roles) > 0 && alltrue([for r in var.roles : can(regex("^[a-z][a-z0-9_]*$", r))])
    error_message = "roles must list at least one role; each is lower-case letters, digits and '_', starting with a letter."
  }

  validation {
    condition     = length(distinct(var.roles)) == length(var.roles)
    error_message = "roles must not repeat: a role names one host of each lab."
  }
}

variable "students" {
  type = map(object({
    name           = string
    ssh_public_key = string
  }))
  description = "Students keyed by their stable roster id (the key of every per-student resource, never a position): display name and one OpenSSH public key line."

  validation {
    condition     = length(var.students) > 0
    error_message = "students must hold at least one student."
  }

  validation {
    condition     = alltrue([for id in keys(var.students) : can(regex("^[a-z_][a-z0-9_-]{0,31}$", id))])
    error_message = "every student id must be a valid Linux user name: 1-32 characters, lower-case letters, digits, '_' and '-', starting with a letter or '_'."
  }

  validation {
    condition = alltrue([
      for s in values(var.students) :
      can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\\.com|sk-ecdsa-sha2-nistp256@openssh\\.com) [A-Za-z0-9+/]+={0,2}( .*)?$", trimspace(s.ssh_public_key)))
    ])
    error_message = "every ssh_public_key must be one OpenSSH public key line: '<type> <base64> [comment]' with type ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256/384/521 or an sk- key."
  }
}

variable "expires_at" {
  type        = string
  description = "When the cohort's resources may be reaped, ISO 8601 UTC (e.g. \"2026-12-24T00:00:00Z\"); null tags them \"none\", which the reaper never reaps."
  default     = null

  validation {
    condition     = var.expires_at == null || can(regex("^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}Z$", var.expires_at))
    error_message = "expires_at must be null or an ISO 8601 UTC time written like 2026-12-24T00:00:00Z."
  }
}

variable "instance_type" {
  type        = string
  description = "EC2 instance type of every lab host (e.g. \"t3.small\")."
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must be an EC2 instance type name such as t3.small."
  }
}

variable "architecture" {
  type        = string
  description = "CPU architecture of instance_type, used to pick the Debian 12 image when ami_id is null: x86_64 or arm64."
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be \"x86_64\" or \"arm64\"."
  }
}

variable "ami_id" {
  type        = string
  description = "AMI for every lab host; null looks up the newest official Debian 12 image (owner 136693071363) for the architecture."
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be null or an AMI id like ami-0123456789abcdef0."
  }
}

variable "availability_zone" {
  type        = string
  description = "Availability zone of the lab subnet (one where instance_type is offered); null takes the first available zone of the region."
  default     = null

  validation {
    condition     = var.availability_zone == null || can(regex("^[a-z]{2}(-[a-z]+)+-\\d[a-z]$", var.availability_zone))
    error_message = "availability_zone must be null or a zone name such as eu-west-1a."
  }
}

variable "allowed_ssh_cidrs" {
  type        = list(string)
  description = "IPv4 networks students and the controller ssh from; the only source SSH (tcp/22) is open to."

  validation {
    condition     = length(var.allowed_ssh_cidrs) > 0 && alltrue([for c in var.allowed_ssh_cidrs : can(cidrhost(c, 0)) && !strcontains(c, ":")])
    error_message = "allowed_ssh_cidrs must list at least one IPv4 CIDR block such as 203.0.113.0/24."
  }

  validation {
    condition     = !contains(var.allowed_ssh_cidrs, "0.0.0.0/0")
    error_message = "allowed_ssh_cidrs must not contain 0.0.0.0/0: name the networks students ssh from."
  }
}

variable "controller_cidrs" {
  type        = list(string)
  default     = []
  description = "IPv4 networks of the controller (grading probes, load, Ansible): the only outside source of the lab ports in controller_ports."

  validation {
    condition     = alltrue([for c in var.controller_cidrs : can(cidrhost(c, 0)) && !strcontains(c, ":") && c != "0.0.0.0/0"])
    error_message = "controller_cidrs must list IPv4 CIDR blocks of the controller (not 0.0.0.0/0), e.g. 198.51.100.7/32."
  }
}

variable "controller_ports" {
  type        = list(number)
  default     = [22, 5555, 5672, 6379, 15672]
  description = "TCP ports the controller reaches on lab hosts: ssh, Flower, AMQP, Redis, the RabbitMQ management API."

  validation {
    condition     = alltrue([for p in var.controller_ports : p >= 1 && p <= 65535 && floor(p) == p])
    error_message = "controller_ports must be TCP port numbers (1-65535)."
  }
}

variable "load_generator_instance_type" {
  type        = string
  default     = null
  description = "Instance type of the cohort's load-generator host (Locust workers inside the VPC, near the brokers), or null for none."

  validation {
    condition     = var.load_generator_instance_type == null || can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.load_generator_instance_type))
    error_message = "load_generator_instance_type must be an instance type such as c6i.large, or null."
  }
}

variable "load_generator_ports" {
  type        = list(number)
  default     = [5672, 6379]
  description = "TCP ports the load generator's Locust workers reach on each lab: AMQP and Redis (the brokers)."

  validation {
    condition     = alltrue([for p in var.load_generator_ports : p >= 1 && p <= 65535 && floor(p) == p])
    error_message = "load_generator_ports must be TCP port numbers (1-65535)."
  }
}

variable "vpc_cidr" {
  type        = string
  description = "IPv4 block of the cohort VPC; the lab subnet is its first /20 (4,091 usable addresses)."
  default     = "10.0.0.0/16"

  validation {
    condition     = can(cidrsubnet(var.vpc_cidr, 4, 0)) && try(tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 24, false)
    error_message = "vpc_cidr must be an IPv4 CIDR block from /16 to /24, such as 10.0.0.0/16."
  }
}

variable "controller_ssh_public_key" {
  type        = string
  description = "Public half of the cohort's controller key: cloud-init authorizes it for the image's default user so Ansible can configure the hosts."

  validation {
    condition     = can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,2}( .*)?$", trimspace(var.controller_ssh_public_key)))
    error_message = "controller_ssh_public_key must be one OpenSSH public key line such as 'ssh-ed25519 AAAA... labkit'."
  }
}

variable "root_volume_size" {
  type        = number
  description = "Size in GiB of each host's encrypted gp3 root volume."
  default     = 8

  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 100 && floor(var.root_volume_size) == var.root_volume_size
    error_message = "root_volume_size must be a whole number of GiB from 8 to 100."
  }
}

variable "extra_tags" {
  type        = map(string)
  description = "Additional tags for every resource (e.g. a cost centre). The kit's own tags (managed_by, cohort, student, scenario, role, expires_at) always win."
  default     = {}
}
