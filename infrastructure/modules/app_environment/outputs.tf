output "service_name" {
  description = "ECS service name (configure it on the environment in opsweb)."
  value       = aws_ecs_service.this.name
}

output "cluster_arn" {
  description = "ECS cluster of the service."
  value       = var.cluster_arn
}

output "task_definition_family" {
  description = "Task definition family opsweb registers revisions in."
  value       = aws_ecs_task_definition.this.family
}

output "container_name" {
  description = "Container whose image opsweb replaces."
  value       = local.container_name
}

output "task_role_name" {
  description = "The application's own role, for the permissions it needs."
  value       = aws_iam_role.task.name
}

output "task_role_arn" {
  description = "ARN of the application's role."
  value       = aws_iam_role.task.arn
}

output "execution_role_arn" {
  description = "ARN of the role ECS uses to start the tasks."
  value       = aws_iam_role.execution.arn
}

output "target_group_arn" {
  description = "Target group behind the listener rule."
  value       = aws_lb_target_group.this.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the containers."
  value       = aws_cloudwatch_log_group.this.name
}
