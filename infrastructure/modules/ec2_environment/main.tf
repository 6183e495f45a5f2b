# One environment of the deployed application on EC2: an Auto Scaling group whose instances each
# run the application as one Docker container, behind a target group of the shared load balancer.
#
# Terraform starts instances with the image given by digest. After that, opsweb deploys
# (docs/ec2-backend.md): through SSM Run Command it switches the container on each instance, in
# batches, to the promoted image's digest, and writes that image to the SSM parameter below, so
# that an instance launched later (scale-out, replacement) boots the same image.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

# The latest Amazon Linux 2023 image: it ships the SSM agent, the AWS CLI and curl.
data "aws_ssm_parameter" "al2023" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.region
  env_file   = "/etc/${var.name}/app.env"
  registry   = split("/", var.image_repository)[0]

  instance_tags = merge(var.tags, { Name = var.name, app-environment = var.environment })

  # Boot: install Docker, read the image to run from the SSM parameter (opsweb keeps it on the
  # digest it last deployed), log in to ECR with the instance role, start the container and tag
  # the instance with its image (opsweb's drift check reads that tag).
  user_data = <<-SCRIPT
    #!/bin/bash
    set -euo pipefail
    dnf install -y docker
    systemctl enable --now docker
    install -d -m 0700 /etc/${var.name}
    touch ${local.env_file}
    chmod 0600 ${local.env_file}
    IMAGE=$(aws ssm get-parameter --region ${local.region} --name ${aws_ssm_parameter.image.name} --query Parameter.Value --output text)
    case "$IMAGE" in
      ${var.image_repository}@sha256:*) ;;
      *) echo "refusing image $IMAGE: not ${var.image_repository}@sha256:..." >&2; exit 1 ;;
    esac
    aws ecr get-login-password --region ${local.region} | docker login --username AWS --password-stdin ${local.registry}
    docker pull "$IMAGE"
    docker run -d --name ${var.container_name} --restart unless-stopped \
      -p ${var.container_port}:${var.container_port} --env-file ${local.env_file} \
      -e PORT=${var.container_port} -e ROLLBACK=false "$IMAGE"
    TOKEN=$(curl -sS -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 60")
    INSTANCE_ID=$(curl -sS -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/instance-id)
    aws ec2 create-tags --region ${local.region} --resources "$INSTANCE_ID" --tags "Key=opsweb:image,Value=$IMAGE"
  SCRIPT
}

# ---- the image new instances start ------------------------------------------------------------

resource "aws_ssm_parameter" "image" {
  name        = "/${var.name}/image"
  description = "Image (repository@digest) that new instances of ${var.name} start; opsweb updates it on every deploy."
  # checkov:skip=CKV2_AWS_34:An image reference is not a secret; instances and opsweb read it as plain text.
  type  = "String"
  value = "${var.image_repository}@${var.image_digest}"
  tags  = var.tags

  lifecycle {
    # opsweb owns the value after the first apply: `terraform apply` must not undo a release.
    ignore_changes = [value]
  }
}

# ---- IAM ----------------------------------------------------------------------------------------

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  name               = "${var.name}-instance"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = var.tags
}

# Lets SSM manage the instance, which is how opsweb's Run Commands reach it.
resource "aws_iam_role_policy_attachment" "ssm_core" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

data "aws_iam_policy_document" "instance" {
  statement {
    sid       = "RegistryLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # this action has no resource-level permissions
  }

  statement {
    sid       = "PullTheApplicationImage"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = [var.image_repository_arn]
  }

  statement {
    sid       = "ReadTheImageToStart"
    actions   = ["ssm:GetParameter"]
    resources = [aws_ssm_parameter.image.arn]
  }

  # At boot an instance records the image it started; only that tag, only on this environment's
  # instances.
  statement {
    sid       = "TagInstancesWithTheirImage"
    actions   = ["ec2:CreateTags"]
    resources = ["arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/app-environment"
      values   = [var.environment]
    }
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "aws:TagKeys"
      values   = ["opsweb:image"]
    }
  }
}

resource "aws_iam_role_policy" "instance" {
  name   = "run-the-app"
  role   = aws_iam_role.instance.id
  policy = data.aws_iam_policy_document.instance.json
}

resource "aws_iam_instance_profile" "this" {
  name = "${var.name}-instance"
  role = aws_iam_role.instance.name
  tags = var.tags
}

# ---- network and load balancer -------------------------------------------------------------------

resource "aws_security_group" "instances" {
  name        = "${var.name}-instances"
  description = "Instances of ${var.name}: HTTP from the load balancer, HTTPS out"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "from_alb" {
  security_group_id            = aws_security_group.instances.id
  description                  = "HTTP from the load balancer"
  referenced_security_group_id = var.alb_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each          = toset(var.egress_cidr_blocks)
  security_group_id = aws_security_group.instances.id
  description       = "HTTPS to the registry, SSM and other AWS APIs"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_lb_target_group" "this" {
  name        = var.name
  vpc_id      = var.vpc_id
  target_type = "instance"
  port        = var.container_port
  # checkov:skip=CKV_AWS_378:TLS ends at the load balancer; the hop to the instance stays inside the VPC, and the instance's security group admits only the load balancer.
  protocol = "HTTP"
  # opsweb deregisters a batch before switching it and waits for draining.
  deregistration_delay = 30

  health_check {
    path                = var.health_check_path
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = var.tags
}

# ---- launch template and Auto Scaling group ----------------------------------------------------

resource "aws_launch_template" "this" {
  name                   = var.name
  image_id               = data.aws_ssm_parameter.al2023.insecure_value
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.instances.id]
  user_data              = base64encode(local.user_data)
  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.this.arn
  }

  # IMDSv2 only, and one hop: containers on Docker's bridge cannot borrow the instance's role.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = 30
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = local.instance_tags
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.instance_tags
  }

  tags = var.tags
}

resource "aws_autoscaling_group" "this" {
  name                      = var.name
  vpc_zone_identifier       = var.subnet_ids
  min_size                  = var.min_size
  max_size                  = var.max_size
  desired_capacity          = var.desired_capacity
  health_check_type         = "ELB"
  health_check_grace_period = 300
  target_group_arns         = [aws_lb_target_group.this.arn]

  launch_template {
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
  }

  dynamic "tag" {
    for_each = local.instance_tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}
