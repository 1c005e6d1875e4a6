package service

import (
	"context"
	"net/mail"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// User is a user as shown by the API (never with the password hash).
type User struct {
	ID        string    `json:"id"`
	Email     string    `json:"email"`
	Name      string    `json:"name"`
	IsAdmin   bool      `json:"is_admin"`
	CreatedAt time.Time `json:"created_at"`
}

// TeamRef is a team seen by one of its members.
type TeamRef struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Role string `json:"role"`
}

// Session is what signup, login and switch-team return.
type Session struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	User      User      `json:"user"`
	Team      TeamRef   `json:"team"`
}

func toUser(u db.User) User {
	return User{ID: u.ID, Email: u.Email, Name: u.Name, IsAdmin: u.IsAdmin, CreatedAt: u.CreatedAt}
}

const minPasswordLen = 8

func checkPassword(field, pw string) error {
	if pw == "" {
		return Invalid(field, "%s is required", field)
	}
	if utf8.RuneCountInString(pw) < minPasswordLen {
		return Invalid(field, "%s must be at least %d characters", field, minPasswordLen)
	}
	if len(pw) > auth.MaxPasswordLen {
		return Invalid(field, "%s must be at most %d bytes", field, auth.MaxPasswordLen)
	}
	return nil
}

func normalizeEmail(email string) (string, error) {
	email = strings.TrimSpace(email)
	if email == "" {
		return "", Invalid("email", "email is required")
	}
	a, err := mail.ParseAddress(email)
	if err != nil || a.Address != email || len(email) > 254 {
		return "", Invalid("email", "email is not a valid address")
	}
	return email, nil
}

func checkName(field, name string, required bool, max int) (string, error) {
	name = strings.TrimSpace(name)
	if name == "" && required {
		return "", Invalid(field, "%s is required", field)
	}
	if utf8.RuneCountInString(name) > max {
		return "", Invalid(field, "%s must be at most %d characters", field, max)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return "", Invalid(field, "%s must not contain control characters", field)
		}
	}
	return name, nil
}

// SignupInput is POST /v1/auth/signup.
type SignupInput struct {
	Email    string `json:"email"`
	Password string `json:"password"`
	Name     string `json:"name"`
}

// Signup creates a user, their default team (as owner) and a session. The
// first user of a fresh install becomes platform admin.
func (s *Service) Signup(ctx context.Context, in SignupInput) (Session, error) {
	email, err := normalizeEmail(in.Email)
	if err != nil {
		return Session{}, err
	}
	if err := checkPassword("password", in.Password); err != nil {
		return Session{}, err
	}
	name, err := checkName("name", in.Name, false, 100)
	if err != nil {
		return Session{}, err
	}
	hash, err := s.passwords.Hash(in.Password)
	if err != nil {
		return Session{}, Internal("signup", err)
	}
	u, team, err := s.createAccount(ctx, newAccount{email: email, name: name, passwordHash: &hash})
	if isUniqueViolation(err) {
		return Session{}, errEmailTaken
	}
	if err != nil {
		return Session{}, Internal("signup", err)
	}
	return s.session(u, team)
}

var errEmailTaken = &Error{Kind: CodeEmailTaken.Kind(), Code: CodeEmailTaken, Field: "email", Message: "an account with this email already exists"}

// newAccount is a user to create: by email sign-up (with a password hash)
// or through a provider (with the identity to link, and no password).
type newAccount struct {
	email, name  string
	passwordHash *string
	identity     *db.CreateIdentityParams
}

// createAccount is the one way users come to exist: the user, their
// default team (as owner) and, through a provider, the identity, in one
// transaction under the signup lock, so the first user of a fresh install
// (and only they) becomes platform admin. A unique violation (email or
// identity taken) is returned as is, for the caller to judge.
func (s *Service) createAccount(ctx context.Context, a newAccount) (db.User, TeamRef, error) {
	teamName := a.name
	if teamName == "" {
		teamName = strings.SplitN(a.email, "@", 2)[0]
	}
	teamName += "'s team"
	var u db.User
	var team db.Team
	err := s.inTx(ctx, func(q *db.Queries) error {
		if err := q.LockSignups(ctx); err != nil {
			return err
		}
		var err error
		u, err = q.CreateUser(ctx, db.CreateUserParams{ID: ids.New(ids.User), Email: a.email, Name: a.name, PasswordHash: a.passwordHash})
		if err != nil {
			return err
		}
		if a.identity != nil {
			id := *a.identity
			id.UserID = u.ID
			if _, err := q.CreateIdentity(ctx, id); err != nil {
				return err
			}
		}
		team, err = q.CreateTeam(ctx, db.CreateTeamParams{ID: ids.New(ids.Team), Name: teamName})
		if err != nil {
			return err
		}
		if err := q.AddMember(ctx, db.AddMemberParams{UserID: u.ID, TeamID: team.ID, Role: "owner", IsDefault: true}); err != nil {
			return err
		}
		actor := userActor(u)
		if err := s.audit.TeamCreated(ctx, q, actor, team.ID, team.Name); err != nil {
			return err
		}
		method := "password"
		if a.identity != nil {
			method = a.identity.Provider
		}
		return s.audit.UserSignedUp(ctx, q, actor, team.ID, u.ID, method)
	})
	if err != nil {
		return db.User{}, TeamRef{}, err
	}
	s.log.InfoContext(ctx, "user signed up", "user_id", u.ID, "team_id", team.ID, "is_admin", u.IsAdmin)
	return u, TeamRef{ID: team.ID, Name: team.Name, Role: "owner"}, nil
}

// userActor is a user acting before any session names them.
func userActor(u db.User) Actor { return Actor{Type: ActorUser, ID: u.ID, Name: u.Email} }

// defaultTeamID is the team a user's own events go to when no session
// names one: their default team, or "" (a platform row) without one.
func defaultTeamID(ctx context.Context, q *db.Queries, userID string) (string, error) {
	t, err := q.GetDefaultTeam(ctx, userID)
	if isNoRows(err) {
		return "", nil
	}
	return t.ID, err
}

func (s *Service) session(u db.User, t TeamRef) (Session, error) {
	tok, exp, err := s.tokens.Issue(u.ID, t.ID, u.SessionVersion)
	if err != nil {
		return Session{}, Internal("issue session", err)
	}
	return Session{Token: tok, ExpiresAt: exp, User: toUser(u), Team: t}, nil
}

// LoginInput is POST /v1/auth/login.
type LoginInput struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

var errBadLogin = Unauthorized(CodeInvalidCredentials, "wrong email or password")

// Login checks the password and opens a session in the default team.
func (s *Service) Login(ctx context.Context, in LoginInput) (Session, error) {
	if strings.TrimSpace(in.Email) == "" {
		return Session{}, Invalid("email", "email is required")
	}
	if in.Password == "" {
		return Session{}, Invalid("password", "password is required")
	}
	email := strings.TrimSpace(in.Email)
	u, err := s.q.GetUserByEmail(ctx, email)
	if isNoRows(err) {
		s.passwords.Check(s.dummyHash, in.Password) // same work as a real check: no user enumeration by timing
		return Session{}, s.loginFailed(ctx, email, "", "unknown email")
	}
	if err != nil {
		return Session{}, Internal("login", err)
	}
	// A user who signed up through a provider has no password: the check
	// still runs (same timing) and fails.
	hash := s.dummyHash
	if u.PasswordHash != nil {
		hash = *u.PasswordHash
	}
	if !s.passwords.Check(hash, in.Password) || u.PasswordHash == nil {
		return Session{}, s.loginFailed(ctx, u.Email, u.ID, "wrong password")
	}
	return s.defaultTeamSession(ctx, u)
}

// defaultTeamSession opens a session for a user who proved who they are
// (password or provider) in their default team.
func (s *Service) defaultTeamSession(ctx context.Context, u db.User) (Session, error) {
	t, err := s.q.GetDefaultTeam(ctx, u.ID)
	if isNoRows(err) {
		return Session{}, Conflict(CodeNoTeam, "this account belongs to no team; create one after signing up again or ask a team owner to add you")
	}
	if err != nil {
		return Session{}, Internal("login", err)
	}
	return s.session(u, TeamRef{ID: t.ID, Name: t.Name, Role: t.Role})
}

// SwitchTeam issues a session for another team of the caller.
func (s *Service) SwitchTeam(ctx context.Context, a auth.AuthContext, teamID string) (Session, error) {
	if teamID == "" {
		return Session{}, Invalid("team_id", "team_id is required")
	}
	m, err := s.q.GetMembership(ctx, db.GetMembershipParams{UserID: a.UserID, TeamID: teamID})
	if isNoRows(err) {
		return Session{}, NotFound(CodeTeamNotFound, "team not found")
	}
	if err != nil {
		return Session{}, Internal("switch team", err)
	}
	u, err := s.q.GetUserByID(ctx, a.UserID)
	if err != nil {
		return Session{}, Internal("switch team", err)
	}
	if err := s.q.SetDefaultTeam(ctx, db.SetDefaultTeamParams{UserID: u.ID, TeamID: teamID}); err != nil {
		return Session{}, Internal("switch team", err)
	}
	return s.session(u, TeamRef{ID: teamID, Name: m.TeamName, Role: m.Role})
}

// AuthenticateJWT resolves a session token; the role is read from the
// database on every request so removals and demotions apply at once.
func (s *Service) AuthenticateJWT(ctx context.Context, token string) (auth.AuthContext, error) {
	c, err := s.tokens.Parse(token)
	if err != nil {
		return auth.AuthContext{}, Unauthorized(CodeInvalidToken, "the session token is invalid or expired")
	}
	m, err := s.q.GetMembership(ctx, db.GetMembershipParams{UserID: c.Subject, TeamID: c.TeamID})
	if isNoRows(err) {
		return auth.AuthContext{}, Unauthorized(CodeInvalidToken, "the session's user or team no longer exists; log in again")
	}
	if err != nil {
		return auth.AuthContext{}, Internal("authenticate", err)
	}
	if c.SessionVersion != m.SessionVersion {
		return auth.AuthContext{}, Unauthorized(CodeSessionRevoked, "the session ended because the password was changed; log in again")
	}
	return auth.AuthContext{Method: auth.MethodJWT, UserID: c.Subject, UserEmail: m.Email, TeamID: c.TeamID, Role: m.Role, IsAdmin: m.IsAdmin}, nil
}

// AuthenticateAPIKey resolves an X-API-Key.
func (s *Service) AuthenticateAPIKey(ctx context.Context, key string) (auth.AuthContext, error) {
	bad := Unauthorized(CodeInvalidAPIKey, "the API key is invalid or was deleted")
	if !auth.LooksLikeAPIKey(key) {
		return auth.AuthContext{}, bad
	}
	k, err := s.q.GetAPIKeyByHash(ctx, auth.HashAPIKey(key))
	if isNoRows(err) {
		return auth.AuthContext{}, bad
	}
	if err != nil {
		return auth.AuthContext{}, Internal("authenticate", err)
	}
	if err := s.q.TouchAPIKey(ctx, k.ID); err != nil {
		s.log.WarnContext(ctx, "record api key use", "key_id", k.ID, "err", err)
	}
	a := auth.AuthContext{Method: auth.MethodAPIKey, TeamID: k.TeamID, Role: "member", APIKeyID: k.ID, APIKeyName: k.Name}
	if k.CreatedBy != nil {
		a.UserID = *k.CreatedBy
	}
	return a, nil
}

// Me is GET /v1/me.
type Me struct {
	User  User      `json:"user"`
	Team  TeamRef   `json:"team"`
	Teams []TeamRef `json:"teams"`
}

// GetMe describes the caller.
func (s *Service) GetMe(ctx context.Context, a auth.AuthContext) (Me, error) {
	u, err := s.q.GetUserByID(ctx, a.UserID)
	if err != nil {
		return Me{}, wrapDB("get me", err)
	}
	rows, err := s.q.ListUserTeams(ctx, a.UserID)
	if err != nil {
		return Me{}, Internal("get me", err)
	}
	me := Me{User: toUser(u), Teams: make([]TeamRef, 0, len(rows))}
	for _, r := range rows {
		ref := TeamRef{ID: r.ID, Name: r.Name, Role: r.Role}
		me.Teams = append(me.Teams, ref)
		if r.ID == a.TeamID {
			me.Team = ref
		}
	}
	return me, nil
}

// UpdateMeInput is PATCH /v1/me.
type UpdateMeInput struct {
	Name *string `json:"name"`
}

// UpdateMe changes the caller's profile.
func (s *Service) UpdateMe(ctx context.Context, a auth.AuthContext, in UpdateMeInput) (User, error) {
	if in.Name == nil {
		return User{}, Invalid("name", "name is required")
	}
	name, err := checkName("name", *in.Name, true, 100)
	if err != nil {
		return User{}, err
	}
	u, err := s.q.UpdateUserName(ctx, db.UpdateUserNameParams{ID: a.UserID, Name: name})
	if err != nil {
		return User{}, wrapDB("update me", err)
	}
	return toUser(u), nil
}

// ChangePasswordInput is POST /v1/me/password.
type ChangePasswordInput struct {
	CurrentPassword string `json:"current_password"`
	NewPassword     string `json:"new_password"`
}

// ChangePassword replaces the caller's password after checking the current one.
func (s *Service) ChangePassword(ctx context.Context, a auth.AuthContext, in ChangePasswordInput) error {
	if in.CurrentPassword == "" {
		return Invalid("current_password", "current_password is required")
	}
	if err := checkPassword("new_password", in.NewPassword); err != nil {
		return err
	}
	u, err := s.q.GetUserByID(ctx, a.UserID)
	if err != nil {
		return wrapDB("change password", err)
	}
	if u.PasswordHash == nil {
		return &Error{Kind: CodeWrongPassword.Kind(), Code: CodeWrongPassword, Field: "current_password", Message: "this account has no password: it signs in through a linked provider"}
	}
	if !s.passwords.Check(*u.PasswordHash, in.CurrentPassword) {
		return &Error{Kind: CodeWrongPassword.Kind(), Code: CodeWrongPassword, Field: "current_password", Message: "current_password is wrong"}
	}
	hash, err := s.passwords.Hash(in.NewPassword)
	if err != nil {
		return Internal("change password", err)
	}
	err = s.inTx(ctx, func(q *db.Queries) error {
		if err := q.UpdateUserPassword(ctx, db.UpdateUserPasswordParams{ID: u.ID, PasswordHash: &hash}); err != nil {
			return err
		}
		return s.audit.PasswordChanged(ctx, q, ActorOf(a), a.TeamID, u.ID)
	})
	if err != nil {
		return Internal("change password", err)
	}
	return nil
}

// loginFailed records a failed login and returns the one answer every
// failure gets. The row is written on its own (there is no change to join);
// failing to write it is logged, not shown: the caller learns nothing new.
func (s *Service) loginFailed(ctx context.Context, email, userID, reason string) error {
	if err := s.audit.LoginFailed(ctx, s.q, email, userID, reason); err != nil {
		s.log.ErrorContext(ctx, "record failed login", "user_id", userID, "err", err)
	}
	return errBadLogin
}
