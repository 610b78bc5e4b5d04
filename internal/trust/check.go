package trust

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Finding codes of CheckAWS. Stable: scripts read them from --json.
const (
	CodeInvalid           = "invalid_policy"       // the document is not a policy
	CodeNoStatement       = "no_statement"         // nothing in it trusts this issuer
	CodePrincipalWildcard = "principal_wildcard"   // "*" as principal: every provider of the account
	CodeNotPrincipal      = "not_principal"        // Allow with NotPrincipal admits what it does not name
	CodeAudMissing        = "aud_missing"          // no positive condition pins aud
	CodeAudWildcard       = "aud_wildcard"         // StringLike with * or ? on aud
	CodeAudOther          = "aud_other"            // aud pinned to another audience
	CodeSubMissing        = "sub_missing"          // no positive condition pins sub
	CodeSubWildcardOrg    = "sub_wildcard_org"     // a wildcard in the org part of sub
	CodeSubWildcardApp    = "sub_wildcard_app"     // a wildcard admitting every (or other) apps of the org
	CodeSubWildcardMach   = "sub_wildcard_machine" // a wildcard where one machine was asked for
	CodeSubOtherOrg       = "sub_other_org"        // sub admits another org
	CodeSubOtherApp       = "sub_other_app"        // sub admits another app (or machine) of the org
	CodeForAllValues      = "for_all_values"       // ForAllValues: true when the token has no such value
	CodeIfExists          = "if_exists"            // ...IfExists: true when the key is absent
)

// Finding is one problem of one statement (Statement -1: the document).
type Finding struct {
	Statement int    `json:"statement"`
	Sid       string `json:"sid,omitempty"`
	Code      string `json:"code"`
	Message   string `json:"message"`
}

// Ignored is a statement the check skipped, and why.
type Ignored struct {
	Statement int    `json:"statement"`
	Sid       string `json:"sid,omitempty"`
	Reason    string `json:"reason"`
}

// Report is the outcome of CheckAWS. OK is true when there are no findings.
type Report struct {
	Issuer   string    `json:"issuer"`
	Scope    string    `json:"scope"`
	OK       bool      `json:"ok"`
	Findings []Finding `json:"findings"`
	Ignored  []Ignored `json:"ignored"`
}

// String is the report for people: one line per finding and per ignored
// statement.
func (r Report) String() string {
	var b strings.Builder
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "FINDING %s: %s: %s\n", stmtName(f.Statement, f.Sid), f.Code, f.Message)
	}
	for _, i := range r.Ignored {
		fmt.Fprintf(&b, "ignored %s: %s\n", stmtName(i.Statement, i.Sid), i.Reason)
	}
	if r.OK {
		fmt.Fprintf(&b, "ok: only %s can assume this role through %s\n", r.Scope, r.Issuer)
	} else {
		fmt.Fprintf(&b, "%d finding(s) for %s through %s\n", len(r.Findings), r.Scope, r.Issuer)
	}
	return b.String()
}

func stmtName(i int, sid string) string {
	switch {
	case i < 0:
		return "policy"
	case sid != "":
		return fmt.Sprintf("statement %d (%s)", i, sid)
	}
	return fmt.Sprintf("statement %d", i)
}

const webIdentityAction = "sts:AssumeRoleWithWebIdentity"

// CheckAWS checks an IAM role trust policy against t: every Allow
// statement that lets t's issuer (in account, when not empty) assume the
// role with a web identity must pin aud to aud and sub to t (the machine's
// subject, "org:app:" and anything after, or "org:" and anything after
// for an org-wide target). Statements for other providers are listed as
// ignored. Conditions combine as IAM combines them: one condition that
// pins a key is enough, whatever others on the same key say.
func CheckAWS(t Target, doc []byte, account, aud string) Report {
	r := Report{Issuer: t.Issuer, Scope: t.describe(), Findings: []Finding{}, Ignored: []Ignored{}}
	var p Policy
	if err := json.Unmarshal(doc, &p); err != nil {
		r.Findings = append(r.Findings, Finding{Statement: -1, Code: CodeInvalid, Message: "not an IAM policy document: " + err.Error()})
		return r
	}
	ours := 0
	for i, st := range p.Statement {
		add := func(code, msg string) {
			r.Findings = append(r.Findings, Finding{Statement: i, Sid: st.Sid, Code: code, Message: msg})
		}
		skip := func(reason string) {
			r.Ignored = append(r.Ignored, Ignored{Statement: i, Sid: st.Sid, Reason: reason})
		}
		if st.Effect != "Allow" {
			skip("not an Allow statement (Deny only narrows)")
			continue
		}
		if !allowsWebIdentity(st) {
			skip("does not allow " + webIdentityAction)
			continue
		}
		switch {
		case st.NotPrincipal != nil:
			add(CodeNotPrincipal, "NotPrincipal in an Allow statement admits every principal it does not name, this issuer included")
		case st.Principal == nil:
			skip("no principal")
			continue
		case st.Principal.Wildcard || principalHasWildcard(st.Principal):
			add(CodePrincipalWildcard, `principal "*" admits tokens of every identity provider of the account, this issuer included`)
		default:
			fed := st.Principal.Types["Federated"]
			match := false
			for _, arn := range fed {
				if providerMatches(arn, t, account) {
					match = true
				}
			}
			if !match {
				skip("trusts other identity providers: " + strings.Join(fed, ", "))
				continue
			}
		}
		ours++
		checkConditions(t, st, aud, add)
	}
	if ours == 0 {
		r.Findings = append(r.Findings, Finding{Statement: -1, Code: CodeNoStatement,
			Message: "no Allow statement lets " + t.Issuer + " assume the role: wrong file, issuer, org or account?"})
	}
	r.OK = len(r.Findings) == 0
	return r
}

// allowsWebIdentity reports whether st's actions include
// sts:AssumeRoleWithWebIdentity (IAM action names match case-insensitively,
// with * and ?).
func allowsWebIdentity(st Statement) bool {
	if len(st.NotAction) > 0 {
		for _, a := range st.NotAction {
			if globMatch(strings.ToLower(a), strings.ToLower(webIdentityAction)) {
				return false
			}
		}
		return true
	}
	for _, a := range st.Action {
		if globMatch(strings.ToLower(a), strings.ToLower(webIdentityAction)) {
			return true
		}
	}
	return false
}

func principalHasWildcard(p *Principal) bool {
	for _, vs := range p.Types {
		for _, v := range vs {
			if strings.ContainsAny(v, "*?") {
				return true
			}
		}
	}
	return false
}

// providerMatches reports whether arn names t's OIDC provider
// (arn:PARTITION:iam::ACCOUNT:oidc-provider/HOSTPATH), in account if set.
func providerMatches(arn string, t Target, account string) bool {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[2] != "iam" {
		return false
	}
	if account != "" && parts[4] != account {
		return false
	}
	return strings.EqualFold(parts[5], "oidc-provider/"+t.HostPath())
}

// condOp is a parsed condition operator: [ForAnyValue:|ForAllValues:]Base[IfExists].
type condOp struct {
	set, base string
	ifExists  bool
}

func parseOp(s string) condOp {
	var o condOp
	if i := strings.Index(s, ":"); i >= 0 {
		o.set, s = s[:i], s[i+1:]
	}
	if strings.HasSuffix(s, "IfExists") {
		o.ifExists, s = true, strings.TrimSuffix(s, "IfExists")
	}
	o.base = s
	return o
}

// checkConditions reports what st leaves open about aud and sub.
func checkConditions(t Target, st Statement, aud string, add func(code, msg string)) {
	prefix := strings.ToLower(t.HostPath())
	type key struct {
		pinned   bool
		problems [][2]string
	}
	keys := map[string]*key{"aud": {}, "sub": {}}
	for _, opName := range sortedKeys(st.Condition) {
		op := parseOp(opName)
		for _, k := range sortedKeys(st.Condition[opName]) {
			lk := strings.ToLower(k)
			if !strings.HasPrefix(lk, prefix+":") {
				continue
			}
			kk := keys[strings.TrimPrefix(lk, prefix+":")]
			if kk == nil {
				continue
			}
			like := false
			switch op.base {
			case "StringEquals", "StringEqualsIgnoreCase":
			case "StringLike":
				like = true
			default:
				continue // negations and other operators only narrow
			}
			switch {
			case op.set == "ForAllValues":
				kk.problems = append(kk.problems, [2]string{CodeForAllValues, opName + " on " + k + " is true when the token has no such value; use " + op.base})
				continue
			case op.ifExists:
				kk.problems = append(kk.problems, [2]string{CodeIfExists, opName + " on " + k + " is true when the key is absent; use " + op.base})
				continue
			}
			vals := st.Condition[opName][k]
			var probs [][2]string
			for _, v := range vals {
				if op.base == "StringEqualsIgnoreCase" {
					v = strings.ToLower(v)
				}
				var code, msg string
				if kk == keys["aud"] {
					code, msg = audProblem(v, like, aud)
				} else {
					code, msg = subProblem(t, v, like)
				}
				if code != "" {
					probs = append(probs, [2]string{code, opName + " " + k + " " + strconvQuote(v) + ": " + msg})
				}
			}
			if len(vals) > 0 && len(probs) == 0 {
				kk.pinned = true
			}
			kk.problems = append(kk.problems, probs...)
		}
	}
	for _, name := range []string{"aud", "sub"} {
		kk := keys[name]
		if kk.pinned {
			continue
		}
		if len(kk.problems) == 0 {
			code := CodeAudMissing
			if name == "sub" {
				code = CodeSubMissing
			}
			add(code, "no StringEquals or StringLike condition on "+t.HostPath()+":"+name+" pins "+name)
			continue
		}
		for _, p := range kk.problems {
			add(p[0], p[1])
		}
	}
}

func strconvQuote(s string) string { b, _ := json.Marshal(s); return string(b) }

func audProblem(v string, like bool, aud string) (string, string) {
	if like && strings.ContainsAny(v, "*?") {
		return CodeAudWildcard, "a wildcard audience admits tokens minted for other relying parties"
	}
	if aud != "" && v != aud {
		return CodeAudOther, "admits the audience " + strconvQuote(v) + ", not " + strconvQuote(aud)
	}
	return "", ""
}

// subProblem says what sub value (a pattern when like) admits beyond t.
// Every string a pattern matches starts with its text up to the first
// wildcard, so that literal prefix decides what it can admit.
func subProblem(t Target, v string, like bool) (string, string) {
	lit := v
	if like {
		if i := strings.IndexAny(v, "*?"); i >= 0 {
			lit = v[:i]
		}
	}
	wild := lit != v
	orgP := t.Org + ":"
	appP := orgP + t.App + ":"
	switch {
	case !wild && t.Machine != "":
		if s, _ := t.Subject(); v != s {
			if !strings.HasPrefix(v, orgP) {
				return CodeSubOtherOrg, "admits a subject of another org"
			}
			return CodeSubOtherApp, "admits a subject other than " + s
		}
	case !wild:
		switch {
		case !strings.HasPrefix(v, orgP):
			return CodeSubOtherOrg, "admits a subject of another org"
		case !t.OrgWide && !strings.HasPrefix(v, appP):
			return CodeSubOtherApp, "admits a machine of another app of " + t.Org
		}
	case !strings.HasPrefix(lit, orgP):
		if strings.HasPrefix(orgP, lit) {
			return CodeSubWildcardOrg, "a wildcard in the org part admits other orgs"
		}
		return CodeSubOtherOrg, "admits subjects of another org"
	case t.OrgWide:
	case !strings.HasPrefix(lit, appP):
		if strings.HasPrefix(appP, lit) {
			return CodeSubWildcardApp, "a wildcard in the app part admits other apps of " + t.Org + " (ask for --org-wide if that is meant)"
		}
		return CodeSubOtherApp, "admits machines of another app of " + t.Org
	case t.Machine != "":
		return CodeSubWildcardMach, "a wildcard admits every machine of " + t.App + ", not only " + t.Machine
	}
	return "", ""
}

// globMatch matches s against an IAM pattern: * any run, ? any one byte.
func globMatch(pattern, s string) bool {
	px, sx := 0, 0
	nextP, nextS := -1, -1
	for px < len(pattern) || sx < len(s) {
		if px < len(pattern) {
			switch c := pattern[px]; c {
			case '*':
				nextP, nextS = px, sx+1
				px++
				continue
			case '?':
				if sx < len(s) {
					px++
					sx++
					continue
				}
			default:
				if sx < len(s) && s[sx] == c {
					px++
					sx++
					continue
				}
			}
		}
		if nextS > 0 && nextS <= len(s) {
			px, sx = nextP, nextS
			continue
		}
		return false
	}
	return true
}
