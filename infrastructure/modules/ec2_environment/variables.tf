variable "name" {
  description = "Name of the Auto Scaling group, launch template, target group and role prefix, e.g. \"app-staging\". opsweb's backend settings name the group."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,27}$", var.name))
    error_message = "Lower-case letters, digits and dashes, at most 28 characters (target group names are limited to 32)."
  }
}

variable "environment" {
  description = "Environment name: dev, staging or production."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the load balancer and the instances."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the instances (no public IP)."
  type        = list(string)
}

variable "alb_security_group_id" {
  description = "Security group of the load balancer that forwards to the target group; only it may reach the instances."
  type        = string
}

variable "image_repository" {
  description = "ECR repository URL, without tag or digest."
  type        = string
}

variable "image_repository_arn" {
  description = "ARN of that repository, for the instance role's pull permission."
  type        = string
}

variable "image_digest" {
  description = "Digest of the image new instances start with until opsweb first deploys (sha256:...). opsweb then writes the image it deploys to the SSM parameter the instances read at boot."
  type        = string

  validation {
    condition     = can(regex("^sha256:[0-9a-f]{64}$", var.image_digest))
    error_message = "image_digest must be sha256: followed by 64 lower-case hex digits; tags are not accepted."
  }
}

variable "container_name" {
  description = "Name of the app's Docker container on each instance (opsweb's container_name setting)."
  type        = string
  default     = "app"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", var.container_name))
    error_message = "Letters, digits, '.', '-' and '_', at most 63 characters."
  }
}

variable "container_port" {
  description = "Port the application listens on, inside the container and on the instance (opsweb's port setting)."
  type        = number
  default     = 8000
}

variable "health_check_path" {
  description = "Path the container answers 200 on, checked by the target group and by opsweb on the instance."
  type        = string
  default     = "/healthz"

  validation {
    condition     = can(regex("^/[A-Za-z0-9._~/-]*$", var.health_check_path))
    error_message = "A path such as /healthz (letters, digits and . _ ~ / - only)."
  }
}

variable "instance_type" {
  description = "EC2 instance type."
  type        = string
  default     = "t3.small"
}

variable "min_size" {
  description = "Fewest instances in the group."
  type        = number
  default     = 2
}

variable "max_size" {
  description = "Most instances in the group."
  type        = number
  default     = 4
}

variable "desired_capacity" {
  description = "Instances the group starts with."
  type        = number
  default     = 2
}

variable "egress_cidr_blocks" {
  description = "Where the instances may open HTTPS connections: the registry, SSM and other AWS APIs (VPC endpoints' ranges, or a NAT's 0.0.0.0/0)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
