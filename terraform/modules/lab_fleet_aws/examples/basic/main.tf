# Two students, the queue-segregation topology, in eu-west-1. Run from this folder:
#   terraform init && terraform apply
provider "aws" {
  region = "eu-west-1"
}

module "lab_fleet" {
  source = "../../"

  cohort        = "example"
  scenario      = "queue-segregation"
  roles         = ["broker", "worker"]
  instance_type = "t3.small"
  expires_at    = "2026-12-24T00:00:00Z"

  allowed_ssh_cidrs         = ["203.0.113.0/24"]
  controller_ssh_public_key = var.controller_ssh_public_key

  students = {
    s01 = { name = "Ada Lovelace", ssh_public_key = var.student_keys["s01"] }
    s02 = { name = "Alan Turing", ssh_public_key = var.student_keys["s02"] }
  }
}
