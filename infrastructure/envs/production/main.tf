# AWS Production: the registries every environment pulls from, opsweb (the release console that
# deploys to Dev, Staging and Production), and the application's production environment.
#
# First apply, in this order (infrastructure/README.md): module.ecr_app and module.ecr_opsweb,
# push the images; then module.opsweb, run its migrations; then everything (the app).

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = {
      project     = "opsweb"
      environment = "production"
      managed-by  = "terraform"
    }
  }
}

locals {
  environment = "production"

  # The application's environments, all named by one convention: cluster "<env>", service,
  # task definition family and role prefix "app-<env>" (envs/<env>/main.tf). opsweb's IAM
  # policy is built from this list and allows nothing outside it.
  app_environments = [
    for env in ["dev", "staging", "production"] : {
      environment         = env
      cluster_name        = env
      service_name        = "app-${env}"
      task_family         = "app-${env}"
      task_role_name      = "app-${env}-task"
      execution_role_name = "app-${env}-execution"
    }
  ]
}

resource "aws_ecs_cluster" "this" {
  name = local.environment

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

# ---- registries: one per image, shared by all environments (promotion is by digest) ----------

module "ecr_app" {
  source = "../../modules/ecr"
  name   = "app"
}

module "ecr_opsweb" {
  source = "../../modules/ecr"
  name   = "opsweb"
}

# ---- the release console --------------------------------------------------------------------

module "opsweb" {
  source = "../../modules/opsweb"

  name                   = "opsweb"
  cluster_arn            = aws_ecs_cluster.this.arn
  vpc_id                 = var.vpc_id
  subnet_ids             = var.private_subnet_ids
  database_subnet_ids    = var.database_subnet_ids
  alb_listener_arn       = var.alb_listener_arn
  alb_security_group_id  = var.alb_security_group_id
  host_name              = var.opsweb_host_name
  listener_rule_priority = 10

  image_repository     = module.ecr_opsweb.repository_url
  image_repository_arn = module.ecr_opsweb.repository_arn
  image_digest         = var.opsweb_image_digest

  # Production database: a standby in a second availability zone, and no accidental deletion.
  deletion_protection = true
  multi_az            = true

  managed_environments       = local.app_environments
  deployable_repository_arns = [module.ecr_app.repository_arn]
}

# ---- the GitHub Actions deploy role (.github/workflows/deploy.yml) ---------------------------

module "github_deploy" {
  source = "../../modules/github_deploy"

  create_oidc_provider = var.create_github_oidc_provider
  github_org           = var.github_org
  github_repo          = var.github_repo

  repository_arn = module.ecr_app.repository_arn
}

# ---- the application's production environment ----------------------------------------------

module "app" {
  source = "../../modules/app_environment"

  name                   = "app-${local.environment}"
  environment            = local.environment
  cluster_arn            = aws_ecs_cluster.this.arn
  vpc_id                 = var.vpc_id
  subnet_ids             = var.private_subnet_ids
  alb_listener_arn       = var.alb_listener_arn
  alb_security_group_id  = var.alb_security_group_id
  host_names             = [var.app_host_name]
  listener_rule_priority = 100

  image_repository     = module.ecr_app.repository_url
  image_repository_arn = module.ecr_app.repository_arn
  image_digest         = var.app_image_digest

  desired_count = 3
  cpu           = 512
  memory        = 1024
  environment_variables = {
    APP_ENV = local.environment
  }
}

# opsweb may deploy only what local.app_environments names; this environment must match it.
check "opsweb_may_deploy_the_production_environment" {
  assert {
    condition = (
      module.app.service_name == local.app_environments[2].service_name &&
      module.app.task_definition_family == local.app_environments[2].task_family &&
      module.app.task_role_name == local.app_environments[2].task_role_name &&
      aws_ecs_cluster.this.name == local.app_environments[2].cluster_name
    )
    error_message = "The production app environment does not follow the naming opsweb's IAM policy expects."
  }
}
