package api

import (
	"context"
	"slices"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/db"
)

// A member's API keys stop working the moment the member is removed from
// the team or leaves it; their keys in other teams keep working.
func TestRemovedMemberKeysAreRevoked(t *testing.T) {
	for _, tc := range []struct {
		name string
		// by chooses who removes the member: the owner, or the member itself.
		byOwner bool
	}{
		{"removed by owner", true},
		{"leaves", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			owner := e.signup("owner@example.com")
			member := e.signup("member@example.com")
			team := owner.Team.ID
			e.join(owner, team, member, "member")
			memberS := e.switchTo(member, team)
			key1, id1 := e.apiKey(memberS, "laptop")
			key2, id2 := e.apiKey(memberS, "ci")
			ownerKey, _ := e.apiKey(owner, "owner")
			homeKey, _ := e.apiKey(member, "home") // the member's own team
			for _, k := range []string{key1, key2, ownerKey, homeKey} {
				e.want("GET", "/v1/sandboxes", nil, cred{key: k}, 200, nil)
			}

			by := memberS
			if tc.byOwner {
				by = owner
			}
			var out struct {
				RevokedAPIKeyIDs []string `json:"revoked_api_key_ids"`
			}
			e.want("DELETE", "/v1/teams/"+team+"/members/"+member.User.ID, nil, by.cred(), 200, &out)
			slices.Sort(out.RevokedAPIKeyIDs)
			want := []string{id1, id2}
			slices.Sort(want)
			if !slices.Equal(out.RevokedAPIKeyIDs, want) {
				t.Fatalf("revoked = %v, want %v", out.RevokedAPIKeyIDs, want)
			}
			for _, k := range []string{key1, key2} {
				e.wantErr("GET", "/v1/sandboxes", nil, cred{key: k}, 401, "invalid_api_key", "")
			}
			e.want("GET", "/v1/sandboxes", nil, cred{key: ownerKey}, 200, nil)
			e.want("GET", "/v1/sandboxes", nil, cred{key: homeKey}, 200, nil)
		})
	}
}

// Defence in depth: a key whose creator is no longer a member is refused by
// the authentication lookup itself, even if the key row survived.
func TestKeyOfFormerMemberRefused(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	member := e.signup("member@example.com")
	team := owner.Team.ID
	e.join(owner, team, member, "member")
	key, id := e.apiKey(e.switchTo(member, team), "laptop")
	e.want("GET", "/v1/sandboxes", nil, cred{key: key}, 200, nil)

	// Remove the membership behind the service's back: the key row stays.
	if _, err := e.q.RemoveMember(context.Background(), db.RemoveMemberParams{TeamID: team, UserID: member.User.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.q.GetAPIKey(context.Background(), dbKey(id, team)); err != nil {
		t.Fatalf("key row gone: %v", err)
	}
	e.wantErr("GET", "/v1/sandboxes", nil, cred{key: key}, 401, "invalid_api_key", "")
}
