output "namespace" {
  description = "Namespace to apply deploy/k8s into."
  value       = kubernetes_namespace_v1.compgrid.metadata[0].name
}

output "secret_name" {
  description = "Secret the deployments read with envFrom."
  value       = kubernetes_secret_v1.compgrid.metadata[0].name
}
