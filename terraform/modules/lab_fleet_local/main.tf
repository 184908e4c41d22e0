# Local lab hosts: systemd-nspawn containers on overlayfs roots, one network
# namespace each, on a bridge owned by the cohort. terraform_data is built into
# Terraform, so this needs no provider download; the work is done by the labkit
# fleet code the provisioners call, which is idempotent and safe to re-run.

resource "terraform_data" "network" {
  input = {
    cohort  = var.cohort
    bridge  = var.network.bridge
    cidr    = var.network.cidr
    gateway = var.network.gateway
    labkit  = var.labkit_command
  }
  triggers_replace = [var.network.bridge, var.network.cidr]

  provisioner "local-exec" {
    command     = "${self.input.labkit} fleet-local network-up"
    environment = { LABKIT_SPEC = jsonencode(self.input) }
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "${self.input.labkit} fleet-local network-down"
    environment = { LABKIT_SPEC = jsonencode(self.input) }
  }
}

# Keyed by host name (student id + role), never by position: adding or removing a
# student leaves every other student's hosts untouched.
resource "terraform_data" "host" {
  for_each = var.hosts

  input = merge(each.value, {
    name                 = each.key
    cohort               = var.cohort
    bridge               = terraform_data.network.output.bridge
    cidr                 = terraform_data.network.output.cidr
    gateway              = terraform_data.network.output.gateway
    labkit               = var.labkit_command
    ssh_private_key_file = var.ssh_private_key_file
  })
  triggers_replace = [each.value.address, var.network.cidr]

  provisioner "local-exec" {
    command     = "${self.input.labkit} fleet-local host-up"
    environment = { LABKIT_SPEC = jsonencode(self.input) }
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "${self.input.labkit} fleet-local host-down"
    environment = { LABKIT_SPEC = jsonencode(self.input) }
  }
}

# The cohort's bastion: the one way students' ssh comes in (access port on the controller -> its sshd), and the
# one host that reaches every lab of the cohort, on the ports students use. It goes with the cohort.
resource "terraform_data" "bastion" {
  count = var.bastion == null ? 0 : 1

  input = {
    name                 = "${var.cohort}-bastion"
    address              = var.bastion.address
    student              = ""
    role                 = "bastion"
    scenario             = var.bastion.scenario
    etc_hosts            = {}
    cohort               = var.cohort
    bridge               = terraform_data.network.output.bridge
    cidr                 = terraform_data.network.output.cidr
    gateway              = terraform_data.network.output.gateway
    labkit               = var.labkit_command
    ssh_private_key_file = var.ssh_private_key_file
  }
  triggers_replace = [var.bastion.address, var.network.cidr]

  provisioner "local-exec" {
    command     = "${self.input.labkit} fleet-local host-up"
    environment = { LABKIT_SPEC = jsonencode(self.input) }
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "${self.input.labkit} fleet-local host-down"
    environment = { LABKIT_SPEC = jsonencode(self.input) }
  }
}
