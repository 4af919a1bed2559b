# The parts of a CompGrid installation that live outside the manifests in deploy/k8s: the
# namespace and the secret every service reads (database URL, the key that encrypts signing
# keys at rest, the first admin). Apply this, then `kubectl apply -k deploy/k8s`.

resource "kubernetes_namespace_v1" "compgrid" {
  metadata {
    name = var.namespace
    labels = {
      "app.kubernetes.io/part-of" = "compgrid"
    }
  }
}

resource "random_password" "secret_key" {
  length  = 48
  special = false
}

resource "kubernetes_secret_v1" "compgrid" {
  metadata {
    name      = "compgrid"
    namespace = kubernetes_namespace_v1.compgrid.metadata[0].name
  }
  data = {
    COMPGRID_DATABASE_URL   = var.database_url
    COMPGRID_SECRET_KEY     = random_password.secret_key.result
    COMPGRID_ADMIN_EMAIL    = var.admin_email
    COMPGRID_ADMIN_PASSWORD = var.admin_password
  }
}
