// Package logging is the one log format of every cnibox applet. Lines go to
// stderr, which runtimes capture and show with a failed call, and optionally
// to an operator's log file. Never to stdout: stdout carries the result.
//
// The level and file come from the environment (CNIBOX_LOG_LEVEL,
// CNIBOX_LOG_FILE) or from a "cnibox" object in the network configuration:
//
//	"cnibox": {"logLevel": "debug", "logFile": "/var/log/cnibox.log"}
//
// The configuration wins over the environment. The default level is "warn":
// a runtime calls us thousands of times a day and shows stderr even on
// success, so routine progress is only written at "info" and "debug".
package logging

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Level orders messages by importance.
type Level int

const (
	LevelError Level = iota
	LevelWarn
	LevelInfo
	LevelDebug
)

// ParseLevel accepts error, warn(ing), info and debug, case-insensitively.
func ParseLevel(s string) (Level, bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "error":
		return LevelError, true
	case "warn", "warning":
		return LevelWarn, true
	case "info":
		return LevelInfo, true
	case "debug":
		return LevelDebug, true
	}
	return LevelWarn, false
}

func (l Level) String() string {
	return [...]string{"error", "warn", "info", "debug"}[l]
}

// Logger writes one applet invocation's log lines.
type Logger struct {
	mu     sync.Mutex
	applet string
	cid    string
	level  Level
	stderr io.Writer
	file   *os.File
	notes  []string
}

// New returns a logger for applet that writes to stderr, configured from
// the environment until Configure sees the network configuration.
func New(applet string, stderr io.Writer) *Logger {
	l := &Logger{applet: applet, stderr: stderr, level: LevelWarn}
	if lv, ok := ParseLevel(os.Getenv("CNIBOX_LOG_LEVEL")); ok {
		l.level = lv
	}
	l.openFile(os.Getenv("CNIBOX_LOG_FILE"))
	return l
}

// Configure applies the "cnibox" object of a network configuration, and
// remembers the container the invocation is about.
func (l *Logger) Configure(config []byte, containerID string) {
	if l == nil {
		return
	}
	l.cid = containerID
	if !strings.Contains(string(config), `"cnibox"`) {
		return // the common case: skip a second decode of the config
	}
	var conf struct {
		Cnibox struct {
			LogLevel string `json:"logLevel"`
			LogFile  string `json:"logFile"`
		} `json:"cnibox"`
	}
	if json.Unmarshal(config, &conf) != nil {
		return
	}
	if lv, ok := ParseLevel(conf.Cnibox.LogLevel); ok {
		l.level = lv
	}
	if conf.Cnibox.LogFile != "" {
		l.openFile(conf.Cnibox.LogFile)
	}
}

func (l *Logger) openFile(path string) {
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		fmt.Fprintf(l.stderr, "cnibox %s: cannot open log file %q: %v\n", l.applet, path, err)
		return
	}
	if l.file != nil {
		l.file.Close()
	}
	l.file = f
}

// Close closes the log file, if any.
func (l *Logger) Close() {
	if l == nil || l.file == nil {
		return
	}
	l.file.Close()
	l.file = nil
}

func (l *Logger) logf(level Level, format string, a ...any) {
	if l == nil || level > l.level {
		return
	}
	msg := fmt.Sprintf(format, a...)
	l.mu.Lock()
	defer l.mu.Unlock()
	cid := l.cid
	if len(cid) > 12 {
		cid = cid[:12]
	}
	line := fmt.Sprintf("%s %s %s[%d] %s: %s\n",
		time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), level, l.applet, os.Getpid(), cid, msg)
	io.WriteString(l.stderr, line)
	if l.file != nil {
		l.file.WriteString(line)
	}
}

// Errorf logs why an invocation failed.
func (l *Logger) Errorf(format string, a ...any) { l.logf(LevelError, format, a...) }

// Warnf logs something the operator should know that did not fail the call.
func (l *Logger) Warnf(format string, a ...any) { l.logf(LevelWarn, format, a...) }

// Infof logs what the applet did.
func (l *Logger) Infof(format string, a ...any) { l.logf(LevelInfo, format, a...) }

// Debugf logs details for whoever is chasing a problem.
func (l *Logger) Debugf(format string, a ...any) { l.logf(LevelDebug, format, a...) }

// Enabled reports whether messages at level are written.
func (l *Logger) Enabled(level Level) bool { return l != nil && level <= l.level }

// Note records something the invocation did (an address reserved, a rule
// added), for the one line Done writes. It costs nothing below "info".
// An IPAM applet run in process by its main plugin notes into the same
// logger, so one line tells the whole attachment.
func (l *Logger) Note(format string, a ...any) {
	if !l.Enabled(LevelInfo) {
		return
	}
	msg := fmt.Sprintf(format, a...)
	l.mu.Lock()
	l.notes = append(l.notes, msg)
	l.mu.Unlock()
}

// Done writes the invocation's one info line: what was done and how long
// it took, then the notes, "; "-separated.
func (l *Logger) Done(what string, took time.Duration) {
	if !l.Enabled(LevelInfo) {
		return
	}
	l.mu.Lock()
	notes := strings.Join(l.notes, "; ")
	l.notes = nil
	l.mu.Unlock()
	if notes == "" {
		notes = "nothing to do"
	}
	l.Infof("%s done in %v: %s", what, took.Round(100*time.Microsecond), notes)
}
