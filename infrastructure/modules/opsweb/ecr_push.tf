# ECR image pushes reach opsweb as a hint: an EventBridge rule on "ECR Image Action" events
# (PUSH, SUCCESS) of the deployable repositories → an API destination that POSTs the event to
# https://<host>/api/v1/webhooks/ecr, its connection adding the key in the X-Opsweb-Api-Key
# header. opsweb compares the key with OPSWEB_ECR_WEBHOOK_KEY (the same value, from Secrets
# Manager through the tasks' `secrets`) and then reads the image back from ECR itself.
#
# An EventBridge connection takes the key as a plain argument (there is no write-only form), so
# unlike SECRET_KEY and DATABASE_URL this key is in the state, marked sensitive. To rotate it,
# increment ecr_webhook_key_version and apply: the connection and the secret change together;
# then redeploy opsweb (new tasks read the new value; pushes in between get 401 and are retried).

locals {
  ecr_push_repositories = [
    for arn in var.deployable_repository_arns : element(split("repository/", arn), 1)
  ]
}

resource "random_password" "ecr_webhook_key" {
  length  = 48
  special = false # a header value
  keepers = { version = var.ecr_webhook_key_version }
}

resource "aws_secretsmanager_secret" "ecr_webhook_key" {
  # checkov:skip=CKV2_AWS_57:Rotated by incrementing ecr_webhook_key_version, which changes this secret and the EventBridge connection in the same apply; a rotation Lambda would change only one of them.
  name                    = "${var.name}/OPSWEB_ECR_WEBHOOK_KEY"
  description             = "The key EventBridge sends with ECR push events to ${var.name}"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 30
  tags                    = var.tags
}

resource "aws_secretsmanager_secret_version" "ecr_webhook_key" {
  secret_id     = aws_secretsmanager_secret.ecr_webhook_key.id
  secret_string = random_password.ecr_webhook_key.result
}

resource "aws_cloudwatch_event_connection" "ecr_push" {
  name               = "${var.name}-ecr-push"
  description        = "opsweb's ECR push webhook: the API key header"
  authorization_type = "API_KEY"

  auth_parameters {
    api_key {
      key   = "X-Opsweb-Api-Key"
      value = random_password.ecr_webhook_key.result
    }
  }
}

resource "aws_cloudwatch_event_api_destination" "ecr_push" {
  name                             = "${var.name}-ecr-push"
  description                      = "opsweb's ECR push webhook"
  invocation_endpoint              = "https://${var.host_name}/api/v1/webhooks/ecr"
  http_method                      = "POST"
  invocation_rate_limit_per_second = 10
  connection_arn                   = aws_cloudwatch_event_connection.ecr_push.arn
}

resource "aws_cloudwatch_event_rule" "ecr_push" {
  name        = "${var.name}-ecr-push"
  description = "Successful image pushes to the repositories opsweb deploys from"
  event_pattern = jsonencode({
    source      = ["aws.ecr"]
    detail-type = ["ECR Image Action"]
    detail = {
      action-type     = ["PUSH"]
      result          = ["SUCCESS"]
      repository-name = local.ecr_push_repositories
    }
  })
  tags = var.tags
}

data "aws_iam_policy_document" "ecr_push_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "ecr_push" {
  name               = "${var.name}-ecr-push"
  assume_role_policy = data.aws_iam_policy_document.ecr_push_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "ecr_push" {
  statement {
    actions   = ["events:InvokeApiDestination"]
    resources = ["${aws_cloudwatch_event_api_destination.ecr_push.arn}/*"]
  }
}

resource "aws_iam_role_policy" "ecr_push" {
  name   = "invoke-opsweb"
  role   = aws_iam_role.ecr_push.id
  policy = data.aws_iam_policy_document.ecr_push.json
}

resource "aws_cloudwatch_event_target" "ecr_push" {
  rule     = aws_cloudwatch_event_rule.ecr_push.name
  arn      = aws_cloudwatch_event_api_destination.ecr_push.arn
  role_arn = aws_iam_role.ecr_push.arn

  # opsweb down for a deploy of itself: EventBridge retries for an hour.
  retry_policy {
    maximum_event_age_in_seconds = 3600
    maximum_retry_attempts       = 20
  }
}
