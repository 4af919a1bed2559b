variable "kubeconfig" {
  description = "Path of the kubeconfig that reaches the cluster CompGrid runs in."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "Context in the kubeconfig; null uses the current one."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Namespace of deploy/k8s."
  type        = string
  default     = "compgrid"
}

variable "database_url" {
  description = "postgresql+asyncpg:// URL of the managed Postgres database (every service gets its own schema in it)."
  type        = string
  sensitive   = true
  validation {
    condition     = startswith(var.database_url, "postgresql+asyncpg://")
    error_message = "database_url must start with postgresql+asyncpg://."
  }
}

variable "admin_email" {
  description = "The first administrator's email (COMPGRID_ADMIN_EMAIL)."
  type        = string
}

variable "admin_password" {
  description = "The first administrator's password (COMPGRID_ADMIN_PASSWORD), at least 12 characters."
  type        = string
  sensitive   = true
  validation {
    condition     = length(var.admin_password) >= 12
    error_message = "admin_password must have at least 12 characters."
  }
}
