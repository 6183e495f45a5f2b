# An example: the application's staging environment on EC2 instances instead of ECS. Apply it,
# then set the opsweb environment's backend to "ec2" with the `opsweb_settings` output
# (docs/ec2-backend.md). opsweb's worker role needs the permissions listed there.

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = {
      project     = "opsweb"
      environment = local.environment
      managed-by  = "terraform"
    }
  }
}

locals {
  environment = "staging"
}

data "aws_ecr_repository" "app" {
  name = var.app_repository_name
}

module "app" {
  source = "../../modules/ec2_environment"

  name                  = "app-ec2-${local.environment}"
  environment           = local.environment
  vpc_id                = var.vpc_id
  subnet_ids            = var.private_subnet_ids
  alb_security_group_id = var.alb_security_group_id

  image_repository     = data.aws_ecr_repository.app.repository_url
  image_repository_arn = data.aws_ecr_repository.app.arn
  image_digest         = var.app_image_digest

  min_size         = 2
  max_size         = 4
  desired_capacity = 2
}

resource "aws_lb_listener_rule" "app" {
  listener_arn = var.alb_listener_arn
  priority     = 150

  action {
    type             = "forward"
    target_group_arn = module.app.target_group_arn
  }

  condition {
    host_header {
      values = [var.app_host_name]
    }
  }
}
