package supervise

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The workload never sees a WICKET_* variable but the socket's, nor a
// secret named in drop; the agent's own values win over the parent's.
func TestChildEnv_DropsSecrets(t *testing.T) {
	tests := []struct {
		name              string
		parent, add, drop []string
		want              []string
	}{
		{
			name:   "machine token and other WICKET_ variables dropped",
			parent: []string{"PATH=/bin", "WICKET_MACHINE_TOKEN=fm2_secret", "WICKET_SEAL_KEY=k", "WICKET_=x", "LANG=C"},
			want:   []string{"PATH=/bin", "LANG=C"},
		},
		{
			name:   "WICKET_SOCKET kept, replaced by add",
			parent: []string{"WICKET_SOCKET=/old.sock", "HOME=/root"},
			add:    []string{"WICKET_SOCKET=/run/wicket/api.sock", "HOME=/home/app"},
			want:   []string{"WICKET_SOCKET=/run/wicket/api.sock", "HOME=/home/app"},
		},
		{
			name:   "WICKET_SOCKET from the parent when add has none",
			parent: []string{"WICKET_SOCKET=/s.sock"},
			want:   []string{"WICKET_SOCKET=/s.sock"},
		},
		{
			name:   "named secrets dropped",
			parent: []string{"ADMIN_TOKEN=abc", "A=1"},
			drop:   []string{"ADMIN_TOKEN"},
			want:   []string{"A=1"},
		},
		{
			name:   "prefix is case-sensitive and anchored",
			parent: []string{"wicket_x=1", "MY_WICKET_X=2"},
			want:   []string{"wicket_x=1", "MY_WICKET_X=2"},
		},
		{
			name:   "malformed entries dropped",
			parent: []string{"NOEQUALS", "=nokey", "OK="},
			add:    []string{"BAD", "AWS_ROLE_ARN=arn:x"},
			want:   []string{"OK=", "AWS_ROLE_ARN=arn:x"},
		},
		{
			name: "last duplicate in add wins",
			add:  []string{"K=1", "K=2"},
			want: []string{"K=2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ChildEnv(tt.parent, tt.add, tt.drop...)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ChildEnv (-want +got):\n%s", diff)
			}
		})
	}
}
