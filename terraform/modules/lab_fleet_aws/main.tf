# Per-student Celery labs on EC2. Every per-student resource is for_each over a map
# keyed by the student's roster id (hosts by "<student>-<role>"), never count: adding
# or removing a student plans changes for that student only.

locals {
  ami_id            = var.ami_id != null ? var.ami_id : one(data.aws_ami.debian12[*].id)
  availability_zone = var.availability_zone != null ? var.availability_zone : data.aws_availability_zones.available.names[0]
}

data "aws_availability_zones" "available" {
  # checkov:skip=CKV_AWS_394:Only a fallback: labkit always passes the zone preflight verified; names[0] (sorted) does not move when AWS adds a zone.
  state = "available"
}

# Official Debian 12 images are published by account 136693071363.
data "aws_ami" "debian12" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["136693071363"]

  filter {
    name   = "name"
    values = ["debian-12-${local.debian_arch}-*"]
  }

  filter {
    name   = "architecture"
    values = [var.architecture]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }

  filter {
    name   = "root-device-type"
    values = ["ebs"]
  }
}

# --- Network: one VPC and one public subnet per cohort -------------------------------

resource "aws_vpc" "this" {
  # checkov:skip=CKV2_AWS_11:Labs live for days and carry no data worth auditing; flow logs would add a log group and cost per student-hour the course does not need.
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = merge(local.shared_tags, { Name = "${var.cohort}-labs" })
}

# Takes over the VPC's default security group and removes all its rules, so nothing
# launched into the VPC by mistake is reachable.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id

  tags = merge(local.shared_tags, { Name = "${var.cohort}-default-deny" })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id

  tags = merge(local.shared_tags, { Name = "${var.cohort}-igw" })
}

resource "aws_subnet" "labs" {
  vpc_id            = aws_vpc.this.id
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, 0)
  availability_zone = local.availability_zone
  # Public addresses are requested per host in the launch template instead.
  map_public_ip_on_launch = false

  tags = merge(local.shared_tags, { Name = "${var.cohort}-labs" })
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id

  tags = merge(local.shared_tags, { Name = "${var.cohort}-public" })
}

resource "aws_route" "internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this.id
}

resource "aws_route_table_association" "labs" {
  subnet_id      = aws_subnet.labs.id
  route_table_id = aws_route_table.public.id
}

# --- Per student: security group ----------------------------------------

resource "aws_security_group" "lab" {
  # checkov:skip=CKV2_AWS_5:Attached to instances through the per-host launch template's network interface, which checkov does not follow.
  for_each = var.students

  # A prefix, not a fixed name: create_before_destroy needs the old and new group to coexist.
  name_prefix = "${var.cohort}-${each.key}-lab-"
  description = "Lab of ${each.key} in cohort ${var.cohort}: SSH from the allowed networks, lab ports only between this student's own hosts"
  vpc_id      = aws_vpc.this.id

  tags = merge(local.common_tags, { student = each.key, role = "*", Name = "${var.cohort}-${each.key}-lab" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each = local.ssh_rules

  security_group_id = aws_security_group.lab[each.value.student].id
  description       = "SSH for ${each.value.student} and the controller from ${each.value.cidr}"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value.cidr

  tags = merge(local.common_tags, { student = each.value.student, role = "*" })
}

# Brokers, Redis, Flower and workers talk to each other on whatever ports the scenario
# uses; only members of the same student's group may reach them, never another lab.
resource "aws_vpc_security_group_ingress_rule" "lab_peers" {
  for_each = var.students

  security_group_id            = aws_security_group.lab[each.key].id
  description                  = "Lab traffic between ${each.key}'s own hosts only"
  ip_protocol                  = "-1"
  referenced_security_group_id = aws_security_group.lab[each.key].id

  tags = merge(local.common_tags, { student = each.key, role = "*" })
}

resource "aws_vpc_security_group_ingress_rule" "controller" {
  for_each = local.controller_rules

  security_group_id = aws_security_group.lab[each.value.student].id
  description       = "Controller (grading, load, Ansible) to ${each.value.student} on tcp/${each.value.port}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr

  tags = merge(local.common_tags, { student = each.value.student, role = "*" })
}

resource "aws_vpc_security_group_egress_rule" "lab_peers" {
  for_each = var.students

  security_group_id            = aws_security_group.lab[each.key].id
  description                  = "Lab traffic to ${each.key}'s own hosts only"
  ip_protocol                  = "-1"
  referenced_security_group_id = aws_security_group.lab[each.key].id

  tags = merge(local.common_tags, { student = each.key, role = "*" })
}

resource "aws_vpc_security_group_egress_rule" "provisioning" {
  # checkov:skip=CKV_AWS_382:Debian mirrors and PyPI have no fixed addresses; egress is limited to HTTP(S), NTP and the VPC resolver.
  for_each = local.egress_rules

  security_group_id = aws_security_group.lab[each.value.student].id
  description       = "Provisioning: ${each.value.name} (${each.value.protocol}/${each.value.port})"
  ip_protocol       = each.value.protocol
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr

  tags = merge(local.common_tags, { student = each.value.student, role = "*" })
}

# --- Per (student, role): launch template and instance -------------------------------

# One launch template per host so its network interface and root volume are tagged
# with the host's own student and role at launch (aws_instance cannot tag its ENI).
resource "aws_launch_template" "host" {
  # checkov:skip=CKV_AWS_88:Students ssh straight into their own lab hosts; SSH is open only to allowed_ssh_cidrs and lab ports only to the student's own hosts.
  for_each = local.hosts

  name                   = "${var.cohort}-${each.key}"
  description            = "${each.value.role} host of ${each.value.student}'s lab in cohort ${var.cohort}"
  image_id               = local.ami_id
  instance_type          = var.instance_type
  update_default_version = true

  # cloud-init: the host's name (RabbitMQ needs a resolvable node name) and the controller key for the image's
  # default user (admin), and no other key: no EC2 key pair, since cloud-init would put the student's key on admin
  # (roles/student_access gives the student their own account). /etc/hosts: localhost entries only, so the lab's
  # role names lab_base writes there survive a reboot.
  user_data = base64encode(join("\n", [
    "#cloud-config",
    "preserve_hostname: false",
    "hostname: ${var.cohort}-${each.key}",
    "manage_etc_hosts: localhost",
    "ssh_pwauth: false",
    "disable_root: true",
    "ssh_authorized_keys:",
    "  - ${trimspace(var.controller_ssh_public_key)}",
    "",
  ]))

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  network_interfaces {
    device_index                = 0
    subnet_id                   = aws_subnet.labs.id
    security_groups             = [aws_security_group.lab[each.value.student].id]
    associate_public_ip_address = true
    delete_on_termination       = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.common_tags, { student = each.value.student, role = each.value.role, Name = "${var.cohort}-${each.key}" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.common_tags, { student = each.value.student, role = each.value.role, Name = "${var.cohort}-${each.key}" })
  }

  tag_specifications {
    resource_type = "network-interface"
    tags          = merge(local.common_tags, { student = each.value.student, role = each.value.role, Name = "${var.cohort}-${each.key}" })
  }

  tags = merge(local.common_tags, { student = each.value.student, role = each.value.role, Name = "${var.cohort}-${each.key}" })
}

resource "aws_instance" "host" {
  # checkov:skip=CKV_AWS_88:Students ssh straight into their own lab hosts; SSH is open only to allowed_ssh_cidrs and lab ports only to the student's own hosts.
  # checkov:skip=CKV_AWS_126:Detailed monitoring bills per instance; lab health is graded by the kit, not CloudWatch.
  # checkov:skip=CKV_AWS_135:Current-generation types (t3, m6i, ...) are EBS-optimized by default; forcing the flag makes t2 launches fail.
  # checkov:skip=CKV2_AWS_41:Lab hosts call no AWS API, so they get no instance profile (nothing for a student to misuse).
  for_each = local.hosts

  launch_template {
    id      = aws_launch_template.host[each.key].id
    version = aws_launch_template.host[each.key].latest_version
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    encrypted             = true
    delete_on_termination = true
    tags                  = merge(local.common_tags, { student = each.value.student, role = each.value.role, Name = "${var.cohort}-${each.key}" })
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tags = merge(local.common_tags, { student = each.value.student, role = each.value.role, Name = "${var.cohort}-${each.key}" })

  lifecycle {
    # A newer Debian image or launch template version applies to hosts created from
    # now on; it must not rebuild a lab a student is working in.
    ignore_changes = [ami, launch_template, user_data, user_data_base64]
  }
}

# --- The cohort's load generator (optional) ------------------------------------------

# Locust workers next to the brokers, for a controller whose address the lab ports do not admit: `labkit load
# --workers N` runs the master on the controller and the workers here, over ssh. It holds every student's
# broker credentials while a load runs, so no student logs in (only the controller's key; ssh from the
# controller's networks when given), and the labs admit it on the brokers' ports only.
resource "aws_security_group" "load_generator" {
  # checkov:skip=CKV2_AWS_5:Attached to the load generator through its launch template's network interface, which checkov does not follow.
  for_each = local.load_generators

  name_prefix = "${var.cohort}-load-generator-"
  description = "Load generator of cohort ${var.cohort}: SSH from the controller only; out to the students' lab ports"
  vpc_id      = aws_vpc.this.id

  tags = merge(local.shared_tags, { role = "load_generator", Name = "${var.cohort}-load-generator" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "load_generator_ssh" {
  for_each = toset(local.load_generator_ssh_cidrs)

  security_group_id = aws_security_group.load_generator["load_generator"].id
  description       = "SSH to the load generator from the controller's network ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value

  tags = merge(local.shared_tags, { role = "load_generator" })
}

resource "aws_vpc_security_group_egress_rule" "load_generator_provisioning" {
  # checkov:skip=CKV_AWS_382:Debian mirrors and PyPI have no fixed addresses; egress is limited to HTTP(S), NTP and the VPC resolver.
  for_each = local.load_generator_egress

  security_group_id = aws_security_group.load_generator["load_generator"].id
  description       = "Provisioning: ${each.key} (${each.value.protocol}/${each.value.port})"
  ip_protocol       = each.value.protocol
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr

  tags = merge(local.shared_tags, { role = "load_generator" })
}

resource "aws_vpc_security_group_egress_rule" "load_generator_labs" {
  for_each = local.load_generator_lab_rules

  security_group_id            = aws_security_group.load_generator["load_generator"].id
  description                  = "Load generator to ${each.value.student}'s lab on tcp/${each.value.port}"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.lab[each.value.student].id

  tags = merge(local.common_tags, { student = each.value.student, role = "*" })
}

resource "aws_vpc_security_group_ingress_rule" "from_load_generator" {
  for_each = local.load_generator_lab_rules

  security_group_id            = aws_security_group.lab[each.value.student].id
  description                  = "Load generator to ${each.value.student}'s lab on tcp/${each.value.port}"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.load_generator["load_generator"].id

  tags = merge(local.common_tags, { student = each.value.student, role = "*" })
}

resource "aws_launch_template" "load_generator" {
  # checkov:skip=CKV_AWS_88:The controller reaches the load generator by ssh from its own networks only (load_generator_ssh).
  for_each = local.load_generators

  name                   = "${var.cohort}-load-generator"
  description            = "Load generator (Locust workers) of cohort ${var.cohort}"
  image_id               = local.ami_id
  instance_type          = each.value
  update_default_version = true

  # cloud-init: the host's name and the controller key for the image's default user; no student key pair.
  user_data = base64encode(join("\n", [
    "#cloud-config",
    "preserve_hostname: false",
    "hostname: ${var.cohort}-load-generator",
    "manage_etc_hosts: localhost",
    "ssh_pwauth: false",
    "disable_root: true",
    "ssh_authorized_keys:",
    "  - ${trimspace(var.controller_ssh_public_key)}",
    "",
  ]))

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  network_interfaces {
    device_index                = 0
    subnet_id                   = aws_subnet.labs.id
    security_groups             = [aws_security_group.load_generator[each.key].id]
    associate_public_ip_address = true
    delete_on_termination       = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.shared_tags, { role = "load_generator", Name = "${var.cohort}-load-generator" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.shared_tags, { role = "load_generator", Name = "${var.cohort}-load-generator" })
  }

  tag_specifications {
    resource_type = "network-interface"
    tags          = merge(local.shared_tags, { role = "load_generator", Name = "${var.cohort}-load-generator" })
  }

  tags = merge(local.shared_tags, { role = "load_generator", Name = "${var.cohort}-load-generator" })
}

resource "aws_instance" "load_generator" {
  # checkov:skip=CKV_AWS_88:The controller reaches the load generator by ssh from its own networks only (load_generator_ssh).
  # checkov:skip=CKV_AWS_126:Detailed monitoring bills per instance; the load's own report measures the run.
  # checkov:skip=CKV_AWS_135:Current-generation types (t3, m6i, ...) are EBS-optimized by default; forcing the flag makes t2 launches fail.
  # checkov:skip=CKV2_AWS_41:The load generator calls no AWS API, so it gets no instance profile.
  for_each = local.load_generators

  launch_template {
    id      = aws_launch_template.load_generator[each.key].id
    version = aws_launch_template.load_generator[each.key].latest_version
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    encrypted             = true
    delete_on_termination = true
    tags                  = merge(local.shared_tags, { role = "load_generator", Name = "${var.cohort}-load-generator" })
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tags = merge(local.shared_tags, { role = "load_generator", Name = "${var.cohort}-load-generator" })

  lifecycle {
    ignore_changes = [ami, launch_template, user_data, user_data_base64]
  }
}
