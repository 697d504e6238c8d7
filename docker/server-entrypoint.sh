#!/bin/sh
# Write the basic-auth config from the environment (never baked into the image), then start the server.
set -eu
mkdir -p /auth
cat > /auth/basic_auth.ini <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:////auth/basic_auth.db
admin_username = ${MLFLOW_ADMIN_USERNAME}
admin_password = ${MLFLOW_ADMIN_PASSWORD}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
chmod 600 /auth/basic_auth.ini
export MLFLOW_AUTH_CONFIG_PATH=/auth/basic_auth.ini
exec mlflow server \
  --backend-store-uri "${BACKEND_STORE_URI}" \
  --artifacts-destination "${ARTIFACTS_DESTINATION}" \
  --host 0.0.0.0 --port 5000 \
  --app-name basic-auth \
  --allowed-hosts "localhost:*,127.0.0.1:*,mlflow:*,${MLFLOW_ALLOWED_HOSTS}"
