output "lab_hosts" {
  description = "Host list contract (see shared design): name, address, student, role, scenario, ssh_user, ssh_private_key_file."
  value       = module.fleet.lab_hosts
}

output "network" {
  description = "The cohort's bridge, subnet and gateway."
  value       = module.fleet.network
}

output "bastion" {
  description = "The cohort's bastion host (name, address, ssh_user), or null."
  value       = module.fleet.bastion
}
