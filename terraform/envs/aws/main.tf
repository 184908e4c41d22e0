# Root config for a cohort on AWS. labkit writes inventories/<cohort>/fleet.auto.tfvars.json
# from the roster and passes it with -var-file; nothing here is cohort-specific.

provider "aws" {
  region = var.region

  # Belt and braces: the module tags every resource itself; default_tags also catch
  # anything a future edit forgets. Values equal the module's, so no perpetual diff.
  default_tags {
    tags = {
      managed_by = "labkit"
      cohort     = var.cohort
      scenario   = var.scenario
      expires_at = coalesce(var.expires_at, "none")
    }
  }
}

module "lab_fleet" {
  source = "../../modules/lab_fleet_aws"

  cohort                       = var.cohort
  scenario                     = var.scenario
  roles                        = var.roles
  students                     = var.students
  expires_at                   = var.expires_at
  instance_type                = var.instance_type
  architecture                 = var.architecture
  ami_id                       = var.ami_id
  availability_zone            = var.availability_zone
  allowed_ssh_cidrs            = var.allowed_ssh_cidrs
  controller_cidrs             = var.controller_cidrs
  controller_ports             = var.controller_ports
  load_generator_instance_type = var.load_generator_instance_type
  controller_ssh_public_key    = var.controller_ssh_public_key
}
