variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "opsweb"
}

variable "cluster_arn" {
  description = "ECS cluster that runs opsweb's web and worker services."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the services and the database."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the tasks."
  type        = list(string)
}

variable "database_subnet_ids" {
  description = "Private subnets for the database, in at least two availability zones."
  type        = list(string)

  validation {
    condition     = length(var.database_subnet_ids) >= 2
    error_message = "RDS needs subnets in at least two availability zones."
  }
}

variable "alb_listener_arn" {
  description = "HTTPS listener of the shared application load balancer."
  type        = string
}

variable "alb_security_group_id" {
  description = "Security group of that load balancer."
  type        = string
}

variable "host_name" {
  description = "Host name of the console, e.g. opsweb.example.com (ALLOWED_HOSTS, CSRF_TRUSTED_ORIGINS)."
  type        = string
}

variable "listener_rule_priority" {
  description = "Priority of opsweb's listener rule, unique on the listener."
  type        = number
}

variable "image_repository" {
  description = "ECR repository URL of opsweb's image, without tag or digest."
  type        = string
}

variable "image_repository_arn" {
  description = "ARN of that repository (the execution role pulls from it)."
  type        = string
}

variable "image_digest" {
  description = "Digest of the opsweb image to run (sha256:...)."
  type        = string

  validation {
    condition     = can(regex("^sha256:[0-9a-f]{64}$", var.image_digest))
    error_message = "image_digest must be sha256: followed by 64 lower-case hex digits; tags are not accepted."
  }
}

variable "web_desired_count" {
  description = "Web tasks."
  type        = number
  default     = 2
}

variable "worker_desired_count" {
  description = "Worker tasks (django-q2 clusters)."
  type        = number
  default     = 1
}

variable "web_cpu" {
  description = "Web task CPU units."
  type        = number
  default     = 512
}

variable "web_memory" {
  description = "Web task memory in MiB."
  type        = number
  default     = 1024
}

variable "worker_cpu" {
  description = "Worker task CPU units."
  type        = number
  default     = 512
}

variable "worker_memory" {
  description = "Worker task memory in MiB."
  type        = number
  default     = 1024
}

variable "q_workers" {
  description = "django-q2 worker processes per worker task (Q_WORKERS)."
  type        = number
  default     = 2
}

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_engine_version" {
  description = "PostgreSQL major version."
  type        = string
  default     = "17"
}

variable "db_allocated_storage" {
  description = "Initial storage in GiB."
  type        = number
  default     = 20
}

variable "db_max_allocated_storage" {
  description = "Storage autoscaling limit in GiB."
  type        = number
  default     = 100
}

variable "db_backup_retention_days" {
  description = "Automated backup retention."
  type        = number
  default     = 14
}

variable "deletion_protection" {
  description = "Protect the database from deletion. Turn off only to destroy a throw-away copy."
  type        = bool
  default     = true
}

variable "multi_az" {
  description = "Run the database with a standby in a second availability zone."
  type        = bool
  default     = true
}

variable "db_password_version" {
  description = "Increment to generate a new database password and DATABASE_URL (write-only values are sent only when this changes)."
  type        = number
  default     = 1
}

variable "secret_key_version" {
  description = "Increment to generate a new Django SECRET_KEY (logs every user out)."
  type        = number
  default     = 1
}

variable "ecr_webhook_key_version" {
  description = "Increment to generate a new key for the ECR push webhook (then redeploy opsweb)."
  type        = number
  default     = 1
}

variable "managed_environments" {
  description = "The application environments opsweb deploys to. Its IAM permissions are limited to exactly these services, task definition families and roles, in this account and region."
  type = list(object({
    environment         = string
    cluster_name        = string
    service_name        = string
    task_family         = string
    task_role_name      = string
    execution_role_name = string
  }))

  validation {
    condition     = length(var.managed_environments) > 0
    error_message = "opsweb needs at least one environment to deploy to."
  }

  validation {
    condition = alltrue(flatten([
      for e in var.managed_environments : [
        for value in values(e) : can(regex("^[A-Za-z0-9_.+=@/-]+$", value))
      ]
    ]))
    error_message = "Names only: no wildcards, no ARNs."
  }
}

variable "deployable_repository_arns" {
  description = "ECR repositories of the images opsweb deploys; it may read their images' metadata."
  type        = list(string)

  validation {
    condition     = length(var.deployable_repository_arns) > 0 && alltrue([for arn in var.deployable_repository_arns : can(regex("^arn:aws[a-z-]*:ecr:[a-z0-9-]+:[0-9]{12}:repository/[a-z0-9._/-]+$", arn))])
    error_message = "ECR repository ARNs, without wildcards."
  }
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention."
  type        = number
  default     = 365
}

variable "egress_cidr_blocks" {
  description = "Where the tasks may connect on 443: AWS APIs, the registry, the environments' health check URLs."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
