# Two roles per task, as ECS intends:
# - the execution role, used by ECS to start opsweb's tasks: pull opsweb's image, write its
#   logs, read its two secrets;
# - the task role, opsweb's own identity (boto3 in orchestration/ecs.py): deploy to the managed
#   environments and nothing else. Both services share it: the worker executes the runs, the
#   web process may read the same services' state.

locals {
  ecs_arn = "arn:${local.partition}:ecs:${local.region}:${local.account_id}"

  # Everything opsweb may touch, spelled out from the environments' names: no wildcard beyond
  # "any revision of this family" and "any task of this cluster".
  managed_cluster_arns = distinct([for e in var.managed_environments : "${local.ecs_arn}:cluster/${e.cluster_name}"])
  managed_service_arns = [for e in var.managed_environments : "${local.ecs_arn}:service/${e.cluster_name}/${e.service_name}"]
  managed_task_arns    = distinct([for e in var.managed_environments : "${local.ecs_arn}:task/${e.cluster_name}/*"])
  managed_family_arns  = [for e in var.managed_environments : "${local.ecs_arn}:task-definition/${e.task_family}:*"]
  passable_role_arns = flatten([
    for e in var.managed_environments : [
      "arn:${local.partition}:iam::${local.account_id}:role/${e.task_role_name}",
      "arn:${local.partition}:iam::${local.account_id}:role/${e.execution_role_name}",
    ]
  ])
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# ---- execution role -----------------------------------------------------------------------

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "RegistryLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # this action has no resource-level permissions
  }
  statement {
    sid       = "PullOpswebsImage"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = [var.image_repository_arn]
  }
  statement {
    sid       = "WriteOpswebsLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this.arn}:*"]
  }
  statement {
    sid     = "ReadOpswebsSecrets"
    actions = ["secretsmanager:GetSecretValue"]
    resources = [
      aws_secretsmanager_secret.secret_key.arn,
      aws_secretsmanager_secret.database_url.arn,
      aws_secretsmanager_secret.ecr_webhook_key.arn,
    ]
  }
  statement {
    sid       = "DecryptOpswebsSecrets"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "start-task"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# ---- task role: what opsweb itself may do ------------------------------------------------------

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "deployer" {
  statement {
    sid       = "DescribeAndUpdateTheEnvironmentsServices"
    actions   = ["ecs:DescribeServices", "ecs:UpdateService"]
    resources = local.managed_service_arns
  }

  statement {
    sid       = "WatchTheirTasks"
    actions   = ["ecs:DescribeTasks"]
    resources = local.managed_task_arns
  }

  statement {
    # ListTasks is authorized on the cluster through the ecs:cluster condition key (AWS's
    # documented pattern); its resource type, container-instance, does not exist on Fargate.
    sid       = "ListTheirTasks"
    actions   = ["ecs:ListTasks"]
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = local.managed_cluster_arns
    }
  }

  statement {
    # DescribeTaskDefinition and RegisterTaskDefinition have no resource-level permissions in
    # IAM: "*" is the only resource they accept. Registering a revision runs nothing until
    # UpdateService, which is limited to the environments' services above.
    sid       = "CloneTaskDefinitions"
    actions   = ["ecs:DescribeTaskDefinition", "ecs:RegisterTaskDefinition"]
    resources = ["*"]
  }

  statement {
    # A revision registered with the tags of the one it clones needs TagResource, on the
    # environments' families and only while registering.
    sid       = "TagTheRevisionsItRegisters"
    actions   = ["ecs:TagResource"]
    resources = local.managed_family_arns
    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RegisterTaskDefinition"]
    }
  }

  statement {
    # A new revision names the environment's task and execution roles; registering it needs
    # PassRole on exactly those roles, for ECS tasks only.
    sid       = "PassTheEnvironmentsRoles"
    actions   = ["iam:PassRole"]
    resources = local.passable_role_arns
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }

  statement {
    sid       = "ReadTheImagesItDeploys"
    actions   = ["ecr:DescribeImages", "ecr:BatchGetImage", "ecr:DescribeImageScanFindings"]
    resources = var.deployable_repository_arns
  }
}

resource "aws_iam_role_policy" "deployer" {
  name   = "deploy-to-managed-environments"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.deployer.json
}
