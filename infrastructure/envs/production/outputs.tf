output "app_repository_url" {
  description = "Where CI pushes the application's images."
  value       = module.ecr_app.repository_url
}

output "opsweb_repository_url" {
  description = "Where CI pushes opsweb's images."
  value       = module.ecr_opsweb.repository_url
}

output "opsweb_url" {
  description = "The release console."
  value       = module.opsweb.url
}

output "opsweb_api_url" {
  description = "opsweb's HTTP API: the repository variable OPSWEB_API_URL of deploy.yml."
  value       = module.opsweb.api_url
}

output "opsweb_one_off_task" {
  description = "For `aws ecs run-task` with a command override (migrate, bootstrap, createsuperuser)."
  value = {
    cluster         = aws_ecs_cluster.this.name
    task_definition = module.opsweb.web_task_definition_arn
    security_group  = module.opsweb.web_security_group_id
    subnets         = var.private_subnet_ids
  }
}

# What to configure on the "AWS Production" environment in opsweb (backend "ecs").

output "cluster_name" {
  description = "ECS cluster of the application."
  value       = aws_ecs_cluster.this.name
}

output "service_name" {
  description = "ECS service opsweb updates."
  value       = module.app.service_name
}

output "task_definition_family" {
  description = "Task definition family opsweb registers revisions in."
  value       = module.app.task_definition_family
}

output "container_name" {
  description = "Container whose image opsweb replaces."
  value       = module.app.container_name
}

output "health_check_url" {
  description = "URL opsweb checks after a deployment."
  value       = "https://${var.app_host_name}/healthz"
}

output "github_deploy_role_arn" {
  description = "Role .github/workflows/deploy.yml assumes: the repository variable AWS_ROLE_ARN."
  value       = module.github_deploy.role_arn
}
