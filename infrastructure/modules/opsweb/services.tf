# The web and worker services: one task definition family each, same image, the role chosen by
# the container command (docker-entrypoint.sh). Terraform owns these revisions: opsweb deploys
# the application's environments, not itself; a new opsweb image is a new image_digest here.

locals {
  # Plain settings only. Secrets come from Secrets Manager through `secrets`.
  environment = [
    { name = "DJANGO_ENV", value = "production" },
    { name = "ALLOWED_HOSTS", value = var.host_name },
    { name = "CSRF_TRUSTED_ORIGINS", value = "https://${var.host_name}" },
    { name = "Q_WORKERS", value = tostring(var.q_workers) },
    { name = "LOG_LEVEL", value = "INFO" },
    # The worker lets the running step finish this long after SIGTERM (under stopTimeout 120).
    { name = "OPSWEB_WORKER_STOP_SECONDS", value = "110" },
    # The load balancer appends the client's address to X-Forwarded-For (login throttling).
    { name = "OPSWEB_TRUSTED_PROXIES", value = "1" },
    { name = "AWS_DEFAULT_REGION", value = local.region },
  ]
  secrets = [
    { name = "SECRET_KEY", valueFrom = aws_secretsmanager_secret.secret_key.arn },
    { name = "DATABASE_URL", valueFrom = aws_secretsmanager_secret.database_url.arn },
    { name = "OPSWEB_ECR_WEBHOOK_KEY", valueFrom = aws_secretsmanager_secret.ecr_webhook_key.arn },
  ]

  web_container = {
    name                   = "web"
    image                  = local.image
    command                = ["web"]
    essential              = true
    readonlyRootFilesystem = true
    # gunicorn's graceful_timeout is 30 s; ECS waits this long after SIGTERM before SIGKILL.
    stopTimeout  = 45
    portMappings = [{ containerPort = 8000, protocol = "tcp" }]
    environment  = local.environment
    secrets      = local.secrets
    mountPoints  = [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]
    healthCheck = {
      command     = ["CMD", "/app/docker-entrypoint.sh", "healthcheck"]
      interval    = 30
      timeout     = 5
      retries     = 3
      startPeriod = 30
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = local.log_group_name
        awslogs-region        = local.region
        awslogs-stream-prefix = "web"
      }
    }
  }

  worker_container = {
    name                   = "worker"
    image                  = local.image
    command                = ["worker"]
    essential              = true
    readonlyRootFilesystem = true
    # The longest ECS allows: `manage.py worker` lets the step in progress finish for
    # OPSWEB_WORKER_STOP_SECONDS (110), then kills the cluster itself; a run cut off is
    # recovered by the reconciler of the next worker ("worker lost": what runs is recorded,
    # health verified, an unhealthy deploy rolled back).
    stopTimeout = 120
    environment = local.environment
    secrets     = local.secrets
    mountPoints = [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = local.log_group_name
        awslogs-region        = local.region
        awslogs-stream-prefix = "worker"
      }
    }
  }
}

# ---- network ----------------------------------------------------------------------------------

resource "aws_security_group" "web" {
  name        = "${var.name}-web"
  description = "${var.name} web tasks: HTTP from the load balancer"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_security_group" "worker" {
  name        = "${var.name}-worker"
  description = "${var.name} worker tasks: outbound only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "web_from_alb" {
  security_group_id            = aws_security_group.web.id
  description                  = "HTTP from the load balancer"
  referenced_security_group_id = var.alb_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 8000
  to_port                      = 8000
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = {
    for pair in setproduct(["web", "worker"], var.egress_cidr_blocks) : "${pair[0]} ${pair[1]}" => {
      group = pair[0] == "web" ? aws_security_group.web.id : aws_security_group.worker.id
      cidr  = pair[1]
    }
  }
  security_group_id = each.value.group
  description       = "HTTPS to AWS APIs, the registry and the environments' health checks"
  cidr_ipv4         = each.value.cidr
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "postgres" {
  for_each = {
    web    = aws_security_group.web.id
    worker = aws_security_group.worker.id
  }
  security_group_id            = each.value
  description                  = "PostgreSQL to opsweb's database"
  referenced_security_group_id = aws_security_group.database.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_lb_target_group" "web" {
  name        = "${var.name}-web"
  vpc_id      = var.vpc_id
  target_type = "ip"
  port        = 8000
  # checkov:skip=CKV_AWS_378:TLS ends at the load balancer; the hop to the task stays inside the VPC, and the task's security group admits only the load balancer.
  protocol             = "HTTP"
  deregistration_delay = 30

  # /healthz answers plain HTTP (exempt from the HTTPS redirect) and checks the database.
  health_check {
    path                = "/healthz"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = var.tags
}

resource "aws_lb_listener_rule" "web" {
  listener_arn = var.alb_listener_arn
  priority     = var.listener_rule_priority

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.web.arn
  }

  condition {
    host_header {
      values = [var.host_name]
    }
  }

  tags = var.tags
}

# ---- task definitions ----------------------------------------------------------------------

resource "aws_ecs_task_definition" "web" {
  family                   = "${var.name}-web"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.web_cpu
  memory                   = var.web_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode([local.web_container])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "tmp"
  }

  tags = var.tags
}

resource "aws_ecs_task_definition" "worker" {
  family                   = "${var.name}-worker"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.worker_cpu
  memory                   = var.worker_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode([local.worker_container])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "tmp"
  }

  tags = var.tags
}

# ---- services --------------------------------------------------------------------------------

resource "aws_ecs_service" "web" {
  name             = "${var.name}-web"
  cluster          = var.cluster_arn
  task_definition  = aws_ecs_task_definition.web.arn
  desired_count    = var.web_desired_count
  launch_type      = "FARGATE"
  platform_version = "LATEST"

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = 60
  enable_ecs_managed_tags            = true
  propagate_tags                     = "SERVICE"

  # A new opsweb image whose tasks do not become healthy is rolled back by ECS.
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.web.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.web.arn
    container_name   = "web"
    container_port   = 8000
  }

  depends_on = [
    aws_lb_listener_rule.web,
    aws_secretsmanager_secret_version.secret_key,
    aws_secretsmanager_secret_version.database_url,
  ]
  tags = var.tags
}

resource "aws_ecs_service" "worker" {
  name             = "${var.name}-worker"
  cluster          = var.cluster_arn
  task_definition  = aws_ecs_task_definition.worker.arn
  desired_count    = var.worker_desired_count
  launch_type      = "FARGATE"
  platform_version = "LATEST"

  # Runs are claimed with a conditional UPDATE, so an old and a new worker side by side during a
  # deployment never execute the same run twice.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  enable_ecs_managed_tags            = true
  propagate_tags                     = "SERVICE"

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.worker.id]
    assign_public_ip = false
  }

  depends_on = [
    aws_secretsmanager_secret_version.secret_key,
    aws_secretsmanager_secret_version.database_url,
  ]
  tags = var.tags
}
