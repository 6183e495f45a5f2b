variable "aws_region" {
  description = "Region of this environment (the same as the state bucket's)."
  type        = string
  default     = "eu-west-1"
}

variable "vpc_id" {
  description = "VPC of this environment (owned by the network team, not by this repository)."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets for the instances."
  type        = list(string)
}

variable "alb_listener_arn" {
  description = "HTTPS listener (TLS 1.2+, the environment's certificate) of the shared load balancer."
  type        = string
}

variable "alb_security_group_id" {
  description = "Security group of that load balancer."
  type        = string
}

variable "app_host_name" {
  description = "Host name of the application in this environment."
  type        = string
}

variable "app_image_digest" {
  description = "Digest of the image the first instances start (sha256:...). From then on opsweb deploys and keeps the image parameter current."
  type        = string
}

variable "app_repository_name" {
  description = "ECR repository of the application, created by envs/production."
  type        = string
  default     = "app"
}
