output "auto_scaling_group_name" {
  description = "opsweb's auto_scaling_group setting."
  value       = aws_autoscaling_group.this.name
}

output "target_group_arn" {
  description = "opsweb's target_group_arn setting, and what a listener rule forwards to."
  value       = aws_lb_target_group.this.arn
}

output "image_parameter_name" {
  description = "opsweb's image_parameter setting: the SSM parameter new instances read their image from."
  value       = aws_ssm_parameter.image.name
}

output "instance_role_name" {
  description = "Role of the instances; attach what the application itself needs to it."
  value       = aws_iam_role.instance.name
}

output "opsweb_settings" {
  description = "The EC2 backend settings for this environment (docs/ec2-backend.md), to paste into the environment in opsweb."
  value = {
    region             = local.region
    auto_scaling_group = aws_autoscaling_group.this.name
    container_name     = var.container_name
    port               = var.container_port
    health_path        = var.health_check_path
    env_file           = local.env_file
    target_group_arn   = aws_lb_target_group.this.arn
    image_parameter    = aws_ssm_parameter.image.name
  }
}
