# Root config for the local fleet. labkit writes the variables of one cohort to
# inventories/<cohort>/fleet.auto.tfvars.json and keeps that cohort's state in
# inventories/<cohort>/terraform.tfstate (backend path set at init).
terraform {
  required_version = ">= 1.4"
  backend "local" {}
}

module "fleet" {
  source               = "../../modules/lab_fleet_local"
  cohort               = var.cohort
  network              = var.network
  hosts                = var.hosts
  labkit_command       = var.labkit_command
  ssh_private_key_file = var.ssh_private_key_file
  bastion              = var.bastion
}
