variable "name" {
  description = "Name of the service, its task definition family and its roles' prefix, e.g. \"app-staging\". opsweb's IAM policy finds them by this name."
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

variable "cluster_arn" {
  description = "ECS cluster that runs the service."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the load balancer and the tasks."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the tasks (no public IP)."
  type        = list(string)
}

variable "alb_listener_arn" {
  description = "HTTPS listener of the shared application load balancer."
  type        = string
}

variable "alb_security_group_id" {
  description = "Security group of that load balancer; only it may reach the tasks."
  type        = string
}

variable "host_names" {
  description = "Host names the listener forwards to this environment."
  type        = list(string)
}

variable "listener_rule_priority" {
  description = "Priority of the listener rule, unique on the listener."
  type        = number
}

variable "image_repository" {
  description = "ECR repository URL, without tag or digest."
  type        = string
}

variable "image_repository_arn" {
  description = "ARN of that repository, for the execution role's pull permission."
  type        = string
}

variable "image_digest" {
  description = "Digest of the image the service starts with (sha256:...). Later deployments are made by opsweb, which registers task definition revisions pinned by digest."
  type        = string

  validation {
    condition     = can(regex("^sha256:[0-9a-f]{64}$", var.image_digest))
    error_message = "image_digest must be sha256: followed by 64 lower-case hex digits; tags are not accepted."
  }
}

variable "container_port" {
  description = "Port the application listens on."
  type        = number
  default     = 8000
}

variable "health_check_path" {
  description = "Path the load balancer checks; it must answer 200 over plain HTTP."
  type        = string
  default     = "/healthz"
}

variable "command" {
  description = "Container command; empty for the image's own."
  type        = list(string)
  default     = []
}

variable "cpu" {
  description = "Task CPU units."
  type        = number
  default     = 512
}

variable "memory" {
  description = "Task memory in MiB."
  type        = number
  default     = 1024
}

variable "desired_count" {
  description = "Number of tasks."
  type        = number
  default     = 2
}

variable "environment_variables" {
  description = "Plain, non-secret environment variables. Secrets go in `secrets`."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for key in keys(var.environment_variables) :
      !can(regex("(?i)(secret|passw|token|credential|private_key|api_key|database_url)", key))
    ])
    error_message = "That looks like a secret: pass it in `secrets` (a Secrets Manager ARN), never as a plain environment variable."
  }
}

variable "secrets" {
  description = "Environment variables filled from Secrets Manager at task start: name => secret ARN (optionally with :json-key::)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for arn in values(var.secrets) : can(regex("^arn:aws[a-z-]*:secretsmanager:", arn))])
    error_message = "Every secret must be a Secrets Manager ARN."
  }
}

variable "secrets_kms_key_arns" {
  description = "Customer managed KMS keys that encrypt those secrets (the execution role decrypts them)."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention."
  type        = number
  default     = 365
}

variable "egress_cidr_blocks" {
  description = "Where the tasks may connect on 443 (AWS APIs through the NAT gateway or VPC endpoints)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
