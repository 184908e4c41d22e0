output "lab_hosts" {
  description = "Host list contract shared with the AWS env: one object per lab host."
  value = [
    for name, h in terraform_data.host : {
      name                 = name
      address              = h.output.address
      student              = h.output.student
      role                 = h.output.role
      scenario             = h.output.scenario
      ssh_user             = var.ssh_user
      ssh_private_key_file = var.ssh_private_key_file
    }
  ]
}

output "network" {
  description = "The cohort's bridge, subnet and gateway (apt proxy) address."
  value       = terraform_data.network.output
}

output "bastion" {
  description = "The cohort's bastion host (name, address, ssh_user), or null."
  value = length(terraform_data.bastion) == 0 ? null : {
    name     = terraform_data.bastion[0].output.name
    address  = terraform_data.bastion[0].output.address
    ssh_user = var.ssh_user
  }
}
