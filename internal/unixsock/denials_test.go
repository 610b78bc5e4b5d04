package unixsock

import (
	"context"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

var summaryRE = regexp.MustCompile(`msg="denied suppressed" peer_uid=(\S+) suppressed=(\d+)`)

func denialLines(logs string) (full int, summaries map[string][]int) {
	summaries = map[string][]int{}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `msg=denied `) {
			full++
		}
		if m := summaryRE.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[2])
			summaries[m[1]] = append(summaries[m[1]], n)
		}
	}
	return full, summaries
}

// S-peer: a uid's denials are logged once in full, then as one count per
// interval; a quiet uid is forgotten; the table of uids is bounded. The
// bubble's fake clock makes every interval exact.
func TestDenialLog_SummarizedPerUID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs sockettest.Buffer
		d := NewDenialLog(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{
			ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey {
					return slog.Attr{}
				}
				return a
			},
		})), DenialLogConfig{Msg: "denied", SummaryMsg: "denied suppressed", Interval: 10 * time.Second, MaxUIDs: 2})
		ctx := context.Background()
		deny := func(uid uint32, n int) {
			for i := 0; i < n; i++ {
				d.Deny(ctx, Peer{UID: uid}, "policy", "peer_uid", uid)
			}
		}
		// Interval 1: 5,000 denials of uid 7, 3 of uid 8, 4 of uids 9 and
		// 10 that do not fit in a table of 2.
		deny(7, 5000)
		deny(8, 3)
		deny(9, 2)
		deny(10, 2)
		if full, _ := denialLines(logs.String()); full != 2 {
			t.Fatalf("%d full lines in the first interval, want 2 (uids 7 and 8):\n%s", full, logs.String())
		}
		time.Sleep(10*time.Second + time.Millisecond)
		synctest.Wait()
		full, sum := denialLines(logs.String())
		if full != 2 || len(sum["7"]) != 1 || sum["7"][0] != 4999 || sum["8"][0] != 2 || sum["other"][0] != 4 {
			t.Fatalf("after one interval: %d full lines, summaries %v, want 2 and 7:[4999] 8:[2] other:[4]:\n%s", full, sum, logs.String())
		}
		// Interval 2: uid 7 goes on, uid 8 is quiet.
		deny(7, 10)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if _, sum := denialLines(logs.String()); len(sum["7"]) != 2 || sum["7"][1] != 10 || len(sum["8"]) != 1 {
			t.Fatalf("second interval: summaries %v, want 7:[4999 10] and nothing more for 8", sum)
		}
		// Uid 8 was forgotten after its quiet interval: its next denial is
		// logged in full again.
		deny(8, 1)
		if full, _ := denialLines(logs.String()); full != 3 {
			t.Errorf("uid 8 after a quiet interval: %d full lines, want 3", full)
		}
		// Flush writes what is pending without waiting for the interval.
		deny(7, 5)
		d.Flush()
		if _, sum := denialLines(logs.String()); len(sum["7"]) != 3 || sum["7"][2] != 5 {
			t.Errorf("after Flush: summaries %v, want 7:[4999 10 5]", sum)
		}
		st := d.Stats()
		if st.ByReason["policy"] != 5000+3+4+10+1+5 || st.Logged != 3 || st.Logged+st.Suppressed != st.ByReason["policy"] {
			t.Errorf("stats = %+v", st)
		}
	})
}
