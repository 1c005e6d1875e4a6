package hostauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/controlplane/audit"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/hostreport"
	"github.com/wrenn-dev/wrenn/internal/pki"
	hostagentv1 "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Agents reaches host agents; *hosts.Pool implements it.
type Agents interface {
	ForHost(h db.Host) hosts.Client
	Evict(hostID string)
}

// Config holds the lifetimes; zero fields take the defaults.
type Config struct {
	// RegistrationTTL is how long a registration token stays usable (1 h).
	RegistrationTTL time.Duration
	// RefreshTTL is a refresh token's lifetime (60 days).
	RefreshTTL time.Duration
	// DestroyTimeout bounds each agent call of a forced delete (30 s).
	DestroyTimeout time.Duration
	// CA, when set, signs each host's leaf at registration and refresh
	// (mTLS mode); nil is plain HTTP mode and CSRs are ignored.
	CA *pki.CA
	// CertTTL is a host leaf's lifetime (pki.HostCertTTL).
	CertTTL time.Duration
}

func (c Config) withDefaults() Config {
	if c.RegistrationTTL <= 0 {
		c.RegistrationTTL = time.Hour
	}
	if c.RefreshTTL <= 0 {
		c.RefreshTTL = 60 * 24 * time.Hour
	}
	if c.DestroyTimeout <= 0 {
		c.DestroyTimeout = 30 * time.Second
	}
	if c.CertTTL <= 0 {
		c.CertTTL = pki.HostCertTTL
	}
	return c
}

// Service holds the host rules. Errors are *service.Error (or
// *HostInUseError for an unforced delete of a busy host).
type Service struct {
	pool   *pgxpool.Pool
	q      *db.Queries
	rdb    *redis.Client
	tokens *HostTokens
	agents Agents
	states *service.States
	audit  *audit.Logger
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
}

// New builds the service; agents may be nil when no agent is ever called
// (a forced delete then only updates the database).
func New(pool *pgxpool.Pool, rdb *redis.Client, tokens *HostTokens, agents Agents, cfg Config, logger *slog.Logger) *Service {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Service{pool: pool, q: db.New(pool), rdb: rdb, tokens: tokens, agents: agents, states: service.NewStates(pool, logger), audit: audit.New(),
		cfg: cfg.withDefaults(), log: logger, now: time.Now}
}

// Tokens exposes the host JWT verifier for the HTTP middleware.
func (s *Service) Tokens() *HostTokens { return s.tokens }

// Host is a host as the API shows it.
type Host struct {
	ID      string  `json:"id"`
	TeamID  *string `json:"team_id"`
	Shared  bool    `json:"shared"`
	Name    string  `json:"name"`
	Address string  `json:"address"`
	Status  string  `json:"status"`
	hostreport.Specs
	LastHeartbeatAt *time.Time `json:"last_heartbeat_at"`
	// CertExpiresAt is when the host's mTLS leaf expires (null: none).
	CertExpiresAt *time.Time `json:"cert_expires_at"`
	CreatedAt     time.Time  `json:"created_at"`
}

func toHost(h db.Host) Host {
	return Host{ID: h.ID, TeamID: h.TeamID, Shared: h.TeamID == nil, Name: h.Name, Address: h.Address,
		Status: h.Status,
		Specs: Specs{VMM: h.Vmm, Accel: h.Accel, Arch: h.Arch, Version: h.Version,
			CPUCount: h.CpuCount, MemoryMB: h.MemoryMb, DiskGB: h.DiskGb,
			Resources: hostreport.Resources{
				Limits: hostreport.Limits{MaxVCPUs: h.MaxVcpus, MaxMemoryMB: h.MaxMemoryMb, MaxDiskMB: h.MaxDiskMb},
				Capacity: hostreport.Capacity{VCPUs: h.CapacityVcpus, MemoryMB: h.CapacityMemoryMb,
					CommittedVCPUs: h.CommittedVcpus, CommittedMemoryMB: h.CommittedMemoryMb},
			}},
		LastHeartbeatAt: h.LastHeartbeatAt, CertExpiresAt: h.CertExpiresAt, CreatedAt: h.CreatedAt}
}

// RegistrationToken is shown once, to the user who created the host.
type RegistrationToken struct {
	Token     string    `json:"registration_token"`
	ExpiresAt time.Time `json:"registration_token_expires_at"`
}

// HostWithToken is the answer to a create or a token regeneration.
type HostWithToken struct {
	Host Host `json:"host"`
	RegistrationToken
}

// CreateHostInput is the body of POST /v1/hosts.
type CreateHostInput struct {
	Name string `json:"name"`
	// Shared makes a platform host (admins only); otherwise the host belongs
	// to the caller's team, which must have BYOC enabled.
	Shared bool `json:"shared"`
}

var (
	errHostNotFound = service.NotFound(service.CodeHostNotFound, "host not found")
	errAPIKey       = service.Forbidden(service.CodeJWTRequired, "hosts are managed with a user session, not an API key")
)

func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }

// canSee: platform admins see every host, team members their team's.
func canSee(a auth.AuthContext, h db.Host) bool {
	return a.IsAdmin || (h.TeamID != nil && *h.TeamID == a.TeamID)
}

// canManage: platform admins manage every host, team owners/admins their team's.
func canManage(a auth.AuthContext, h db.Host) bool {
	return a.IsAdmin || (h.TeamID != nil && *h.TeamID == a.TeamID && (a.Role == "owner" || a.Role == "admin"))
}

func checkHostName(name string) (string, error) {
	name = strings.TrimSpace(name)
	if name == "" {
		return "", service.Invalid("name", "name is required")
	}
	if utf8.RuneCountInString(name) > 100 || !utf8.ValidString(name) {
		return "", service.Invalid("name", "name must be valid text of at most 100 characters")
	}
	return name, nil
}

// CreateHost records a pending host and returns its registration token.
func (s *Service) CreateHost(ctx context.Context, a auth.AuthContext, in CreateHostInput) (HostWithToken, error) {
	if a.Method == auth.MethodAPIKey {
		return HostWithToken{}, errAPIKey
	}
	name, err := checkHostName(in.Name)
	if err != nil {
		return HostWithToken{}, err
	}
	var teamID *string
	if in.Shared {
		if !a.IsAdmin {
			return HostWithToken{}, service.Forbidden(service.CodeAdminRequired, "only platform admins add shared hosts")
		}
	} else {
		byoc, err := s.q.GetTeamBYOC(ctx, a.TeamID)
		if isNoRows(err) {
			return HostWithToken{}, service.NotFound(service.CodeTeamNotFound, "team not found")
		}
		if err != nil {
			return HostWithToken{}, service.Internal("load team", err)
		}
		if !byoc {
			return HostWithToken{}, service.Forbidden(service.CodeBYOCNotEnabled, "this team may not bring its own hosts")
		}
		if !a.IsAdmin && a.Role != "owner" && a.Role != "admin" {
			return HostWithToken{}, service.Forbidden(service.CodeForbidden, "only team owners and admins add hosts")
		}
		teamID = &a.TeamID
	}
	var createdBy *string
	if a.UserID != "" {
		createdBy = &a.UserID
	}
	var h db.Host
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		var err error
		if h, err = q.InsertPendingHost(ctx, db.InsertPendingHostParams{ID: ids.New(ids.Host), TeamID: teamID, Name: name, CreatedBy: createdBy}); err != nil {
			return err
		}
		return s.audit.HostCreated(ctx, q, service.ActorOf(a), h)
	})
	if err != nil {
		return HostWithToken{}, service.Internal("insert host", err)
	}
	tok, err := s.issueRegistrationToken(ctx, h.ID)
	if err != nil {
		return HostWithToken{}, err
	}
	return HostWithToken{Host: toHost(h), RegistrationToken: tok}, nil
}

// ListHosts lists the hosts the caller may see.
func (s *Service) ListHosts(ctx context.Context, a auth.AuthContext) ([]Host, error) {
	if a.Method == auth.MethodAPIKey {
		return nil, errAPIKey
	}
	var rows []db.Host
	var err error
	if a.IsAdmin {
		rows, err = s.q.ListHosts(ctx)
	} else {
		rows, err = s.q.ListTeamHosts(ctx, &a.TeamID)
	}
	if err != nil {
		return nil, service.Internal("list hosts", err)
	}
	out := make([]Host, 0, len(rows))
	for _, h := range rows {
		out = append(out, toHost(h))
	}
	return out, nil
}

func (s *Service) visibleHost(ctx context.Context, a auth.AuthContext, id string) (db.Host, error) {
	if a.Method == auth.MethodAPIKey {
		return db.Host{}, errAPIKey
	}
	if !ids.Valid(ids.Host, id) {
		return db.Host{}, errHostNotFound
	}
	h, err := s.q.GetHost(ctx, id)
	if isNoRows(err) || (err == nil && !canSee(a, h)) {
		return db.Host{}, errHostNotFound
	}
	if err != nil {
		return db.Host{}, service.Internal("load host", err)
	}
	return h, nil
}

func (s *Service) manageableHost(ctx context.Context, a auth.AuthContext, id string) (db.Host, error) {
	h, err := s.visibleHost(ctx, a, id)
	if err != nil {
		return h, err
	}
	if !canManage(a, h) {
		return h, service.Forbidden(service.CodeForbidden, "only platform admins, or owners and admins of the host's team, manage it")
	}
	return h, nil
}

// GetHost returns one host the caller may see.
func (s *Service) GetHost(ctx context.Context, a auth.AuthContext, id string) (Host, error) {
	h, err := s.visibleHost(ctx, a, id)
	if err != nil {
		return Host{}, err
	}
	return toHost(h), nil
}

// RegenerateToken replaces the host's registration token (the old one stops
// working), e.g. to re-install the agent.
func (s *Service) RegenerateToken(ctx context.Context, a auth.AuthContext, id string) (HostWithToken, error) {
	h, err := s.manageableHost(ctx, a, id)
	if err != nil {
		return HostWithToken{}, err
	}
	tok, err := s.issueRegistrationToken(ctx, h.ID)
	if err != nil {
		return HostWithToken{}, err
	}
	return HostWithToken{Host: toHost(h), RegistrationToken: tok}, nil
}

// Redis keys: the token (hashed) maps to its host; the host maps to its
// current token hash so regenerating can drop the previous one.
func regKey(hash string) string       { return "wrenn:hostreg:token:" + hash }
func regHostKey(hostID string) string { return "wrenn:hostreg:host:" + hostID }

func (s *Service) issueRegistrationToken(ctx context.Context, hostID string) (RegistrationToken, error) {
	tok, err := randomToken(RegistrationTokenPrefix)
	if err != nil {
		return RegistrationToken{}, service.Internal("registration token", err)
	}
	hash := hashToken(tok)
	old, err := s.rdb.GetDel(ctx, regHostKey(hostID)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return RegistrationToken{}, service.Internal("drop old registration token", err)
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if old != "" {
			p.Del(ctx, regKey(old))
		}
		p.Set(ctx, regKey(hash), hostID, s.cfg.RegistrationTTL)
		p.Set(ctx, regHostKey(hostID), hash, s.cfg.RegistrationTTL)
		return nil
	})
	if err != nil {
		return RegistrationToken{}, service.Internal("store registration token", err)
	}
	return RegistrationToken{Token: tok, ExpiresAt: s.now().Add(s.cfg.RegistrationTTL).UTC()}, nil
}

// Specs describe the machine an agent runs on.
type Specs = hostreport.Specs

// RegisterInput is the body of POST /v1/hosts/register.
type RegisterInput struct {
	Token   string `json:"token"`
	Address string `json:"address"`
	Specs   Specs  `json:"specs"`
	// CSR is the agent's certificate request (PEM), needed in mTLS mode.
	CSR string `json:"csr"`
}

// RefreshInput is the body of POST /v1/hosts/auth/refresh.
type RefreshInput struct {
	RefreshToken string `json:"refresh_token"`
	// CSR renews the host's leaf (needed in mTLS mode).
	CSR string `json:"csr"`
}

// Credentials are what an agent keeps: its JWT and its refresh token.
type Credentials struct {
	HostID                string    `json:"host_id"`
	Token                 string    `json:"token"`
	TokenExpiresAt        time.Time `json:"token_expires_at"`
	RefreshToken          string    `json:"refresh_token"`
	RefreshTokenExpiresAt time.Time `json:"refresh_token_expires_at"`
	CertGrant
}

var (
	errBadRegistration = service.Unauthorized(service.CodeInvalidRegistrationToken, "the registration token is invalid, expired or already used")
	errBadRefresh      = service.Unauthorized(service.CodeInvalidRefreshToken, "the refresh token is invalid or expired")
)

// CheckAddress validates an agent address: host:port with a usable port.
func CheckAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return service.Invalid("address", "address must be host:port, got %q", addr)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return service.Invalid("address", "address port must be 1-65535, got %q", port)
	}
	if strings.ContainsAny(host, "/?#@ ") {
		return service.Invalid("address", "address host %q is not a host name or IP", host)
	}
	return nil
}

func checkSpecs(sp Specs) error {
	if sp.CPUCount < 0 || sp.MemoryMB < 0 || sp.DiskGB < 0 {
		return service.Invalid("specs", "specs must not be negative")
	}
	for f, v := range map[string]string{"vmm": sp.VMM, "accel": sp.Accel, "arch": sp.Arch, "version": sp.Version} {
		if len(v) > 64 || !utf8.ValidString(v) {
			return service.Invalid("specs."+f, "%s must be text of at most 64 bytes", f)
		}
	}
	return checkResources(sp.Resources, "specs.")
}

func checkResources(r hostreport.Resources, prefix string) error {
	var fe *hostreport.FieldError
	if err := r.Check(prefix); errors.As(err, &fe) {
		return service.Invalid(fe.Field, "%s", fe.Message)
	}
	return nil
}

// Register trades a registration token for credentials; the host becomes
// online at the given address. The token works once; earlier credentials
// of the host are revoked.
func (s *Service) Register(ctx context.Context, in RegisterInput) (Credentials, error) {
	if !wellFormed(RegistrationTokenPrefix, in.Token) {
		return Credentials{}, errBadRegistration
	}
	// Input is checked before the token is consumed so a typo does not burn it.
	if err := CheckAddress(in.Address); err != nil {
		return Credentials{}, err
	}
	if err := checkSpecs(in.Specs); err != nil {
		return Credentials{}, err
	}
	csr, err := s.checkCSR(in.CSR)
	if err != nil {
		return Credentials{}, err
	}
	// GETDEL makes the token single-use even under concurrent registrations;
	// if the transaction below does not commit, the token is put back so the
	// agent can retry with it.
	hash := hashToken(in.Token)
	hostID, err := s.rdb.GetDel(ctx, regKey(hash)).Result()
	if errors.Is(err, redis.Nil) {
		return Credentials{}, errBadRegistration
	}
	if err != nil {
		return Credentials{}, service.Internal("consume registration token", err)
	}
	committed := false
	defer func() {
		if !committed {
			s.restoreRegistrationToken(ctx, hostID, hash)
		}
	}()
	var creds Credentials
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		if _, err := q.GetHost(ctx, hostID); isNoRows(err) {
			return errBadRegistration // deleted since the token was made
		} else if err != nil {
			return service.Internal("load host", err)
		}
		if _, err := q.RevokeHostRefreshTokens(ctx, hostID); err != nil {
			return service.Internal("revoke old refresh tokens", err)
		}
		sp := in.Specs
		h, err := q.RegisterHostSpecs(ctx, db.RegisterHostSpecsParams{ID: hostID, Address: in.Address,
			Vmm: sp.VMM, Accel: sp.Accel, Arch: sp.Arch, Version: sp.Version,
			CpuCount: sp.CPUCount, MemoryMb: sp.MemoryMB, DiskGb: sp.DiskGB,
			MaxVcpus: sp.Limits.MaxVCPUs, MaxMemoryMb: sp.Limits.MaxMemoryMB, MaxDiskMb: sp.Limits.MaxDiskMB,
			CapacityVcpus: sp.Capacity.VCPUs, CapacityMemoryMb: sp.Capacity.MemoryMB,
			CommittedVcpus: sp.Capacity.CommittedVCPUs, CommittedMemoryMb: sp.Capacity.CommittedMemoryMB})
		if err != nil {
			return service.Internal("register host", err)
		}
		if err := s.audit.HostRegistered(ctx, q, audit.ActorHostAgent(hostID), h); err != nil {
			return service.Internal("register host", err)
		}
		rt, rtExp, err := s.insertRefresh(ctx, q, hostID, "")
		if err != nil {
			return err
		}
		grant, err := s.grantCert(ctx, q, csr, hostID, in.Address, false)
		if err != nil {
			return err
		}
		creds = Credentials{HostID: hostID, RefreshToken: rt, RefreshTokenExpiresAt: rtExp, CertGrant: grant}
		return nil
	})
	if err != nil {
		return Credentials{}, err
	}
	committed = true
	if s.agents != nil {
		s.agents.Evict(hostID) // the address may have changed
	}
	return s.withJWT(creds)
}

// restoreToken puts a consumed registration token back, for what is left of
// its lifetime, unless the host has been given another token since (the host
// key then names a different hash) or the host key has expired.
var restoreToken = redis.NewScript(`
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local ttl = redis.call('PTTL', KEYS[2])
if ttl <= 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl, 'NX')
return 1`)

// restoreRegistrationToken undoes the GETDEL of a registration whose
// transaction failed: the failure was ours, so the token must stay usable.
func (s *Service) restoreRegistrationToken(ctx context.Context, hostID, hash string) {
	// The request may be gone; the token must come back all the same.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := restoreToken.Run(rctx, s.rdb, []string{regKey(hash), regHostKey(hostID)}, hash, hostID).Err(); err != nil {
		s.log.ErrorContext(ctx, "restore registration token after a failed registration; issue a new token", "host_id", hostID, "err", err)
	}
}

func (s *Service) withJWT(c Credentials) (Credentials, error) {
	tok, exp, err := s.tokens.Issue(c.HostID)
	if err != nil {
		return Credentials{}, service.Internal("issue host jwt", err)
	}
	c.Token, c.TokenExpiresAt = tok, exp.UTC()
	return c, nil
}

// insertRefresh stores a new refresh token; family "" starts a new family.
func (s *Service) insertRefresh(ctx context.Context, q *db.Queries, hostID, family string) (string, time.Time, error) {
	rt, err := randomToken(RefreshTokenPrefix)
	if err != nil {
		return "", time.Time{}, service.Internal("refresh token", err)
	}
	id := ids.New("hrt-")
	if family == "" {
		family = id
	}
	exp := s.now().Add(s.cfg.RefreshTTL).UTC()
	if _, err := q.InsertHostRefreshToken(ctx, db.InsertHostRefreshTokenParams{
		ID: id, HostID: hostID, FamilyID: family, TokenHash: hashToken(rt), ExpiresAt: exp}); err != nil {
		return "", time.Time{}, service.Internal("store refresh token", err)
	}
	return rt, exp, nil
}

// Refresh rotates a refresh token: the new one is issued, then the old one
// revoked. A token presented after it was revoked is a sign of theft (or of
// a replay), so its whole family is revoked and the host must register
// again. With a CA the host's leaf is renewed from the CSR in the same
// transaction.
func (s *Service) Refresh(ctx context.Context, in RefreshInput) (Credentials, error) {
	refreshToken := in.RefreshToken
	if !wellFormed(RefreshTokenPrefix, refreshToken) {
		return Credentials{}, errBadRefresh
	}
	csr, err := s.checkCSR(in.CSR)
	if err != nil {
		return Credentials{}, err
	}
	var creds Credentials
	reused := false
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		old, err := q.GetHostRefreshTokenForUpdate(ctx, hashToken(refreshToken))
		if isNoRows(err) {
			return errBadRefresh
		}
		if err != nil {
			return service.Internal("load refresh token", err)
		}
		if old.RevokedAt != nil {
			if _, err := q.RevokeHostRefreshFamily(ctx, old.FamilyID); err != nil {
				return service.Internal("revoke token family", err)
			}
			reused = true
			return nil // commit the family revocation
		}
		if !s.now().Before(old.ExpiresAt) {
			return errBadRefresh
		}
		rt, rtExp, err := s.insertRefresh(ctx, q, old.HostID, old.FamilyID)
		if err != nil {
			return err
		}
		newRow, err := q.GetHostRefreshTokenForUpdate(ctx, hashToken(rt))
		if err != nil {
			return service.Internal("load new refresh token", err)
		}
		if _, err := q.RevokeHostRefreshToken(ctx, db.RevokeHostRefreshTokenParams{ID: old.ID, ReplacedBy: newRow.ID}); err != nil {
			return service.Internal("revoke old refresh token", err)
		}
		var grant CertGrant
		if csr != nil {
			h, err := q.GetHost(ctx, old.HostID)
			if err != nil {
				return service.Internal("load host", err)
			}
			if grant, err = s.grantCert(ctx, q, csr, h.ID, h.Address, true); err != nil {
				return err
			}
		}
		creds = Credentials{HostID: old.HostID, RefreshToken: rt, RefreshTokenExpiresAt: rtExp, CertGrant: grant}
		return nil
	})
	if err != nil {
		return Credentials{}, err
	}
	if reused {
		s.log.WarnContext(ctx, "revoked refresh token presented again; token family revoked")
		return Credentials{}, service.Unauthorized(service.CodeRefreshTokenReused, "the refresh token was already used; the host must register again")
	}
	return s.withJWT(creds)
}

// AuthenticateHost verifies a host JWT and returns the host ID.
func (s *Service) AuthenticateHost(token string) (string, error) {
	id, err := s.tokens.Parse(token)
	if err != nil {
		return "", service.Unauthorized(service.CodeInvalidHostToken, "missing, invalid or expired host token")
	}
	return id, nil
}

// Heartbeat records that the host is alive, with the resources it reports
// (nil keeps the stored ones); callerHostID is the host JWT's subject and
// must match hostID. A deleted host answers 404 so its agent stops.
func (s *Service) Heartbeat(ctx context.Context, callerHostID, hostID string, res *hostreport.Resources) (Host, error) {
	if callerHostID != hostID {
		return Host{}, service.Forbidden(service.CodeForbidden, "a host may only send its own heartbeat")
	}
	p := db.HeartbeatHostParams{ID: hostID}
	if res != nil {
		if err := checkResources(*res, ""); err != nil {
			return Host{}, err
		}
		l, c := res.Limits, res.Capacity
		p.MaxVcpus, p.MaxMemoryMb, p.MaxDiskMb = &l.MaxVCPUs, &l.MaxMemoryMB, &l.MaxDiskMB
		p.CapacityVcpus, p.CapacityMemoryMb = &c.VCPUs, &c.MemoryMB
		p.CommittedVcpus, p.CommittedMemoryMb = &c.CommittedVCPUs, &c.CommittedMemoryMB
	}
	var h db.Host
	err := s.states.InTx(ctx, func(tx *service.StateTx) error {
		var err error
		h, _, err = tx.HostAnswered(ctx, p, audit.ActorHostAgent(hostID))
		return err
	})
	if isNoRows(err) {
		if _, gerr := s.q.GetHost(ctx, hostID); isNoRows(gerr) {
			return Host{}, errHostNotFound
		}
		return Host{}, service.Conflict(service.CodeHostNotRegistered, "the host has not registered")
	}
	if err != nil {
		return Host{}, service.Internal("record heartbeat", err)
	}
	return toHost(h), nil
}

// SandboxRef names a sandbox affected by a host delete.
type SandboxRef struct {
	ID     string `json:"id"`
	TeamID string `json:"team_id"`
	Status string `json:"status"`
}

// HostInUseError is returned by an unforced delete of a host that still
// has sandboxes.
type HostInUseError struct {
	Sandboxes []SandboxRef
}

func (e *HostInUseError) Error() string {
	return fmt.Sprintf("host has %d sandboxes", len(e.Sandboxes))
}

// DeleteResult reports a delete.
type DeleteResult struct {
	// Destroyed lists the sandboxes a forced delete stopped.
	Destroyed []SandboxRef `json:"destroyed_sandboxes"`
}

// DeleteHost removes a host. With sandboxes left it fails with
// *HostInUseError unless force, which destroys them through the agent
// (best effort: an unreachable agent does not block the delete), marks them
// stopped, deletes the host and evicts its client.
func (s *Service) DeleteHost(ctx context.Context, a auth.AuthContext, id string, force bool) (DeleteResult, error) {
	h, err := s.manageableHost(ctx, a, id)
	if err != nil {
		return DeleteResult{}, err
	}
	live := service.LiveStatuses()
	sbs, err := s.q.ListHostSandboxes(ctx, db.ListHostSandboxesParams{HostID: &h.ID, Statuses: service.StatusStrings(live)})
	if err != nil {
		return DeleteResult{}, service.Internal("list host sandboxes", err)
	}
	refs := make([]SandboxRef, 0, len(sbs))
	for _, sb := range sbs {
		refs = append(refs, SandboxRef{ID: sb.ID, TeamID: sb.TeamID, Status: sb.Status})
	}
	if len(refs) > 0 && !force {
		return DeleteResult{}, &HostInUseError{Sandboxes: refs}
	}
	for _, sb := range refs {
		if s.agents != nil && h.Address != "" && h.Status == hosts.StatusOnline {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.DestroyTimeout)
			_, derr := s.agents.ForHost(h).DestroySandbox(dctx, connect.NewRequest(&hostagentv1.DestroySandboxRequest{SandboxId: sb.ID}))
			cancel()
			if derr != nil && connect.CodeOf(derr) != connect.CodeNotFound {
				s.log.WarnContext(ctx, "destroy sandbox of deleted host failed", "host", h.ID, "sandbox", sb.ID, "err", derr)
			}
		}
		msg := "host deleted"
		if _, _, err := s.states.Change(ctx, service.Change{SandboxID: sb.ID, From: live, To: service.StatusStopped,
			Actor: service.ActorOf(a), Reason: msg, ErrorMessage: &msg}); err != nil {
			return DeleteResult{}, service.Internal("stop sandbox", err)
		}
	}
	err = s.states.InTx(ctx, func(tx *service.StateTx) error {
		n, err := tx.Q.DeleteHostByID(ctx, h.ID)
		if err != nil || n == 0 {
			return err
		}
		return tx.Audit.HostDeleted(ctx, tx.Tail, service.ActorOf(a), h, len(refs))
	})
	if err != nil {
		return DeleteResult{}, service.Internal("delete host", err)
	}
	if old, err := s.rdb.GetDel(ctx, regHostKey(h.ID)).Result(); err == nil {
		s.rdb.Del(ctx, regKey(old))
	}
	if s.agents != nil {
		s.agents.Evict(h.ID)
	}
	return DeleteResult{Destroyed: refs}, nil
}
