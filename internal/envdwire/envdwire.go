// Package envdwire names the Wrenn-only extensions of the envd wire
// protocol that both envd and its clients use. E2B's messages are never
// changed; extensions are request headers or separate endpoints.
package envdwire

// DetachHeader on a process.Process/Start request, with the value "true",
// makes envd end the stream right after the start event while the process
// runs on in the background with its output kept for Connect (up to the
// replay bound). Without it, a client that starts a process and hangs up at
// once may already have been sent, and so be counted as having received,
// its first output, which a later Connect would then not replay.
const DetachHeader = "Wrenn-Detach"

// ErrorReasonHeader is set in the metadata of a Connect error answered by
// envd when the plain code is ambiguous: ResourceExhausted means a full
// disk, too many watchers or too many entries alike. Clients that do not
// know it (E2B's SDKs) see the same code and message as before.
const ErrorReasonHeader = "Wrenn-Error-Reason"

// ReasonDiskFull is ErrorReasonHeader's value for ENOSPC in the guest.
const ReasonDiskFull = "disk-full"

// Version is the version of E2B's envd protocol this envd implements, as
// E2B's SDKs read it (envdVersion): they gate features on it (0.4.0: the
// template's default user runs commands; 0.5.2: CloseStdin; 0.5.7:
// octet-stream uploads), all of which envd serves.
const Version = "0.5.7"
