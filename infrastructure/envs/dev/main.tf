# AWS Dev: the application's dev environment. opsweb (in envs/production) deploys
# to it automatically when CI merges to develop.

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = {
      project     = "opsweb"
      environment = "dev"
      managed-by  = "terraform"
    }
  }
}

locals {
  environment = "dev"
}

resource "aws_ecs_cluster" "this" {
  name = local.environment

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

data "aws_ecr_repository" "app" {
  name = var.app_repository_name
}

module "app" {
  source = "../../modules/app_environment"

  # opsweb's IAM policy in envs/production expects these names: cluster "dev", service,
  # task definition family and role prefix "app-dev".
  name                   = "app-${local.environment}"
  environment            = local.environment
  cluster_arn            = aws_ecs_cluster.this.arn
  vpc_id                 = var.vpc_id
  subnet_ids             = var.private_subnet_ids
  alb_listener_arn       = var.alb_listener_arn
  alb_security_group_id  = var.alb_security_group_id
  host_names             = [var.app_host_name]
  listener_rule_priority = 100

  image_repository     = data.aws_ecr_repository.app.repository_url
  image_repository_arn = data.aws_ecr_repository.app.arn
  image_digest         = var.app_image_digest

  desired_count = 1
  cpu           = 256
  memory        = 512
  environment_variables = {
    APP_ENV = local.environment
  }
}
