output "url" {
  description = "The console."
  value       = "https://${var.host_name}/admin/"
}

output "api_url" {
  description = "The HTTP API (OpenAPI document at openapi.json, docs at docs); CI's OPSWEB_API_URL."
  value       = "https://${var.host_name}/api/v1"
}

output "ecr_webhook_url" {
  description = "Where EventBridge sends pushes to the deployable repositories (opsweb re-reads ECR)."
  value       = aws_cloudwatch_event_api_destination.ecr_push.invocation_endpoint
}

output "web_service_name" {
  description = "ECS service of the web role."
  value       = aws_ecs_service.web.name
}

output "worker_service_name" {
  description = "ECS service of the worker role."
  value       = aws_ecs_service.worker.name
}

output "web_task_definition_arn" {
  description = "Web task definition; run one-off commands (migrate, bootstrap) with it and a command override."
  value       = aws_ecs_task_definition.web.arn
}

output "web_security_group_id" {
  description = "Security group for one-off tasks that need the database."
  value       = aws_security_group.web.id
}

output "task_role_arn" {
  description = "opsweb's own role (the deployer)."
  value       = aws_iam_role.task.arn
}

output "database_endpoint" {
  description = "RDS endpoint (host:port)."
  value       = aws_db_instance.this.endpoint
}

output "secret_arns" {
  description = "Secrets Manager ARNs of SECRET_KEY and DATABASE_URL."
  value = {
    SECRET_KEY   = aws_secretsmanager_secret.secret_key.arn
    DATABASE_URL = aws_secretsmanager_secret.database_url.arn
  }
}

output "log_group_name" {
  description = "CloudWatch log group of both services (stream prefixes web/ and worker/)."
  value       = aws_cloudwatch_log_group.this.name
}

output "web_task_definition_family" {
  description = "Family of the web task definition (one-off tasks run any revision of it)."
  value       = aws_ecs_task_definition.web.family
}

output "execution_role_arn" {
  description = "Execution role of both services (ECS pulls the image, writes logs, reads secrets)."
  value       = aws_iam_role.execution.arn
}

output "log_group_arn" {
  description = "ARN of the log group of both services, without the trailing \":*\"."
  value       = aws_cloudwatch_log_group.this.arn
}
