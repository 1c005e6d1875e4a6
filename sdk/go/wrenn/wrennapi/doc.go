// Package wrennapi is the Wrenn REST API's models and raw client, generated
// by oapi-codegen from the control plane's OpenAPI document (make generate).
// Programs normally use package wrenn, which wraps these with typed errors,
// retries and the WebSocket and file streams.
package wrennapi
