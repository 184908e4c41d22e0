# Values derived from the inputs alone (no provider, no data source), kept apart so
# tests/unit/aws/test_terraform_static.py can evaluate them with a bare terraform binary.

locals {
  # The kit's tags. teardown.sweep and the reaper select on managed_by + cohort and
  # read expires_at, so they go on every taggable resource and override extra_tags.
  kit_tags = {
    managed_by = "labkit"
    cohort     = var.cohort
    scenario   = var.scenario
    expires_at = coalesce(var.expires_at, "none")
  }
  common_tags = merge(var.extra_tags, local.kit_tags)

  # Cohort-wide network pieces belong to no single student or role: "*" (never a valid
  # student id or role name, so no inventory group can be built from it).
  shared_tags = merge(local.common_tags, { student = "*", role = "*" })

  # Roles cannot contain '-', so "<student>-<role>" is unambiguous.
  hosts = {
    for pair in setproduct(keys(var.students), var.roles) :
    "${pair[0]}-${pair[1]}" => { student = pair[0], role = pair[1] }
  }

  ssh_rules = {
    for pair in setproduct(keys(var.students), var.allowed_ssh_cidrs) :
    "${pair[0]}/${pair[1]}" => { student = pair[0], cidr = pair[1] }
  }

  # The controller (grading probes, load, Ansible) is the only outside source of the lab ports.
  controller_rules = {
    for t in setproduct(keys(var.students), var.controller_cidrs, var.controller_ports) :
    "${t[0]}/${t[1]}/${t[2]}" => { student = t[0], cidr = t[1], port = t[2] }
  }

  # What provisioning needs out of the VPC: mirrors and PyPI over HTTP(S), DNS to the VPC resolver, NTP.
  egress = {
    http  = { protocol = "tcp", port = 80, cidr = "0.0.0.0/0" }
    https = { protocol = "tcp", port = 443, cidr = "0.0.0.0/0" }
    dns   = { protocol = "udp", port = 53, cidr = "${cidrhost(var.vpc_cidr, 2)}/32" }
    ntp   = { protocol = "udp", port = 123, cidr = "0.0.0.0/0" }
  }
  egress_rules = {
    for pair in setproduct(keys(var.students), keys(local.egress)) :
    "${pair[0]}/${pair[1]}" => merge(local.egress[pair[1]], { student = pair[0], name = pair[1] })
  }

  # The optional load-generator host: Locust workers inside the VPC for a controller the lab ports do not admit.
  # It reaches each student's lab on the brokers' ports (load_generator_ports) and nothing else; only the
  # controller's networks (else the ssh networks) reach its sshd, and only the controller's key logs in.
  load_generators = var.load_generator_instance_type == null ? {} : { load_generator = var.load_generator_instance_type }
  load_generator_lab_rules = length(local.load_generators) == 0 ? {} : {
    for pair in setproduct(keys(var.students), var.load_generator_ports) :
    "${pair[0]}/${pair[1]}" => { student = pair[0], port = pair[1] }
  }
  load_generator_ssh_cidrs = length(local.load_generators) == 0 ? [] : (
    length(var.controller_cidrs) > 0 ? var.controller_cidrs : var.allowed_ssh_cidrs
  )
  load_generator_egress = length(local.load_generators) == 0 ? {} : local.egress

  debian_arch = { x86_64 = "amd64", arm64 = "arm64" }[var.architecture]
}
