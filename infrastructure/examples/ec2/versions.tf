terraform {
  required_version = ">= 1.11"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }

  # State in S3 with S3-native locking, as for envs/ (see infrastructure/README.md).
  backend "s3" {
    bucket       = "opsweb-terraform-state"
    key          = "examples/ec2/terraform.tfstate"
    region       = "eu-west-1"
    encrypt      = true
    use_lockfile = true
  }
}
