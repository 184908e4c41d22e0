# The host-list contract shared with terraform/envs/local (design.md, "lab_hosts").
# `address` is what ssh and Ansible use (the public IP); `lab_address` is the private
# IP the student's other hosts must use, because the lab ports are open only between
# members of the student's security group.
output "lab_hosts" {
  description = "One object per lab host: name, address, lab_address, student, role, scenario, ssh_user, ssh_private_key_file (the contract of both envs)."
  value = [
    for key, host in module.lab_fleet.hosts : {
      name                 = host.name
      address              = host.public_ip
      lab_address          = host.private_ip
      student              = host.student
      role                 = host.role
      scenario             = var.scenario
      ssh_user             = var.ssh_user
      ssh_private_key_file = var.ssh_private_key_file
    }
  ]
}

# The cohort's load-generator host (labkit load runs its Locust workers there), in the same shape, or null.
output "load_generator" {
  description = "The load-generator host (name, address, lab_address, role, scenario, ssh_user, ssh_private_key_file), or null."
  value = module.lab_fleet.load_generator == null ? null : {
    name                 = module.lab_fleet.load_generator.name
    address              = module.lab_fleet.load_generator.public_ip
    lab_address          = module.lab_fleet.load_generator.private_ip
    student              = ""
    role                 = "load_generator"
    scenario             = var.scenario
    ssh_user             = var.ssh_user
    ssh_private_key_file = var.ssh_private_key_file
  }
}

output "vpc_id" {
  description = "ID of the cohort VPC (for the instructor's eyes; teardown works from tags)."
  value       = module.lab_fleet.vpc_id
}

output "ami_id" {
  description = "AMI of the lab hosts; labkit pins it in the cohort's tfvars so later runs reuse it."
  value       = module.lab_fleet.ami_id
}
