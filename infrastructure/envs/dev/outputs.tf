# What to configure on the "AWS Dev" environment in opsweb (backend "ecs").

output "cluster_name" {
  description = "ECS cluster."
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
