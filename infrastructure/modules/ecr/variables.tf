variable "name" {
  description = "Repository name, e.g. \"app\" or \"opsweb\"."
  type        = string
}

variable "keep_images" {
  description = "How many tagged images to keep. Rollback redeploys an earlier image by digest, so keep enough history to cover every environment's previous stable versions."
  type        = number
  default     = 300

  validation {
    condition     = var.keep_images >= 50
    error_message = "Keep at least 50 images: rollback targets must not be expired."
  }
}

variable "untagged_expiry_days" {
  description = "Untagged images (failed or superseded pushes) are deleted after this many days."
  type        = number
  default     = 14
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
