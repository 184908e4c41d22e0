output "hosts" {
  description = "Lab hosts keyed by \"<student>-<role>\": name, student, role, instance_id, public_ip (what ssh uses) and private_ip (what the lab's own hosts use)."
  value = {
    for key, host in local.hosts : key => {
      name        = "${var.cohort}-${key}"
      student     = host.student
      role        = host.role
      instance_id = aws_instance.host[key].id
      public_ip   = aws_instance.host[key].public_ip
      private_ip  = aws_instance.host[key].private_ip
    }
  }
}

output "load_generator" {
  description = "The cohort's load-generator host (name, instance_id, public_ip, private_ip), or null when there is none."
  value = length(aws_instance.load_generator) == 0 ? null : {
    name        = "${var.cohort}-load-generator"
    instance_id = aws_instance.load_generator["load_generator"].id
    public_ip   = aws_instance.load_generator["load_generator"].public_ip
    private_ip  = aws_instance.load_generator["load_generator"].private_ip
  }
}

output "vpc_id" {
  description = "ID of the cohort VPC."
  value       = aws_vpc.this.id
}

output "subnet_id" {
  description = "ID of the cohort's lab subnet."
  value       = aws_subnet.labs.id
}

output "security_group_ids" {
  description = "Security group of each student's lab, keyed by student id."
  value       = { for id, sg in aws_security_group.lab : id => sg.id }
}

output "ami_id" {
  description = "AMI the launch templates use (given, or the Debian 12 image found by filter)."
  value       = local.ami_id
}

output "availability_zone" {
  description = "Availability zone of the lab subnet and every host."
  value       = local.availability_zone
}
