// Command go-postgres-reader is a dativo process plugin (protocol 1, see docs/process-protocol.md)
// that reads a PostgreSQL table or query with pgx and streams it as Arrow IPC on stdout.
//
// It does not decide types itself: dativo sends the canonical plan of the source in the
// handshake (config.postgres_plan: the SQL, the Arrow schema and each column's kind, built by
// dativo.postgres_sdk.describe_source), and this program decodes PostgreSQL's
// binary values into exactly that schema, failing on the same values the built-in readers
// fail on (numeric that does not fit, infinite dates, multi-dimensional arrays).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/decimal128"
	"github.com/apache/arrow-go/v18/arrow/extensions"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
)

const protocolVersion = 1

// Exit codes of the protocol.
const (
	exitOK                  = 0
	exitFailed              = 1
	exitBadHandshake        = 2
	exitUnsupportedProtocol = 3
)

// The offsets between PostgreSQL's epoch (2000-01-01) and Unix's.
const (
	pgEpochDays   = 10957
	pgEpochMicros = int64(946684800000000)
)

type column struct {
	Name          string `json:"name"`
	PgType        string `json:"pg_type"`
	Kind          string `json:"kind"`
	IsArray       bool   `json:"is_array"`
	Unconstrained bool   `json:"unconstrained_numeric"`
	Precision     int32  `json:"precision"`
	Scale         int32  `json:"scale"`
}

type plan struct {
	SQL          string   `json:"sql"`
	Conninfo     string   `json:"conninfo"`
	Schema       string   `json:"schema"`
	Columns      []column `json:"columns"`
	ArrayColumns []int    `json:"array_columns"`
}

type handshake struct {
	Dativo    string `json:"dativo"`
	Protocol  int    `json:"protocol"`
	Protocols []int  `json:"protocols"`
	Kind      string `json:"kind"`
	Config    struct {
		PostgresPlan *plan `json:"postgres_plan"`
	} `json:"config"`
}

// pluginError is what travels to dativo as the error record on stderr.
type pluginError struct {
	Class     string
	Message   string
	Hint      string
	Transient bool
	Cause     error // the driver's error, if any: its SQLSTATE decides Transient in writeError
}

func (e *pluginError) Error() string { return e.Message }
func (e *pluginError) Unwrap() error { return e.Cause }

// transientSQLState mirrors dativo.postgres_sdk.is_transient_sqlstate: connection exceptions (08),
// insufficient resources (53), system errors (58), serialization failures and deadlocks, a lock not
// available, and the server ending or refusing the session (57P01-57P03, 57P05). Everything else,
// authentication (28), syntax and undefined objects (42), data (22) ..., is terminal.
func transientSQLState(code string) bool {
	switch code {
	case "40001", "40P01", "55P03", "57P01", "57P02", "57P03", "57P05":
		return true
	}
	return strings.HasPrefix(code, "08") || strings.HasPrefix(code, "53") || strings.HasPrefix(code, "58")
}

// connectionLost: the client lost the connection without a server error (socket closed, timeout).
func connectionLost(err error) bool {
	var netErr net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &netErr) || pgconn.Timeout(err)
}

func schemaError(msg, hint string) error {
	return &pluginError{Class: "SchemaError", Message: msg, Hint: hint}
}

func writeError(err error, fallback string) {
	record := map[string]any{"dativo": "error", "error": fallback, "message": err.Error(), "hint": nil, "transient": false}
	var pe *pluginError
	if errors.As(err, &pe) {
		record["error"] = pe.Class
		if pe.Hint != "" {
			record["hint"] = pe.Hint
		}
		record["transient"] = pe.Transient
	}
	// Transient by SQLSTATE where the server sent one, else by the error's type; never by its text.
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		record["message"] = "PostgreSQL: " + pgErr.Message
		record["transient"] = transientSQLState(pgErr.Code)
	} else if pe == nil && connectionLost(err) {
		record["transient"] = true
	}
	line, _ := json.Marshal(record)
	os.Stderr.Write(append(line, '\n'))
}

func main() {
	os.Exit(run())
}

func run() int {
	in := bufio.NewReaderSize(os.Stdin, 1<<16)
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	defer out.Flush()

	line, err := in.ReadBytes('\n')
	if err != nil {
		writeError(fmt.Errorf("bad handshake: stdin ended before the handshake line"), "PluginError")
		return exitBadHandshake
	}
	var hs handshake
	if err := json.Unmarshal(line, &hs); err != nil {
		writeError(fmt.Errorf("bad handshake: %v", err), "PluginError")
		return exitBadHandshake
	}
	offered := hs.Protocols
	if len(offered) == 0 {
		offered = []int{hs.Protocol}
	}
	supported := false
	for _, v := range offered {
		supported = supported || v == protocolVersion
	}
	if !supported {
		writeError(fmt.Errorf("go-postgres-reader speaks protocol %d; dativo offered %v", protocolVersion, offered), "PluginError")
		return exitUnsupportedProtocol
	}
	if hs.Kind != "reader" {
		writeError(fmt.Errorf("bad handshake: go-postgres-reader is a reader, the job uses it as a %q", hs.Kind), "PluginError")
		return exitBadHandshake
	}
	p := hs.Config.PostgresPlan
	if p == nil {
		writeError(fmt.Errorf("go-postgres-reader needs a 'connector: postgres' source (config.postgres_plan is missing)"), "ConfigError")
		return exitFailed
	}
	if err := serve(p, in, out); err != nil {
		out.Flush()
		writeError(err, "SourceError")
		return exitFailed
	}
	return exitOK
}

func serve(p *plan, in *bufio.Reader, out *bufio.Writer) error {
	raw, err := base64.StdEncoding.DecodeString(p.Schema)
	if err != nil {
		return fmt.Errorf("config.postgres_plan.schema is not base64: %w", err)
	}
	schemaReader, err := ipc.NewReader(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("config.postgres_plan.schema is not an Arrow IPC stream: %w", err)
	}
	schema := schemaReader.Schema()
	schemaReader.Release()
	if len(schema.Fields()) != len(p.Columns) {
		return fmt.Errorf("config.postgres_plan has %d columns but its schema %d", len(p.Columns), len(schema.Fields()))
	}

	// SIGTERM (dativo stopping us) cancels the context: pgconn then cancels the running query.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	config, err := pgconn.ParseConfig(p.Conninfo)
	if err != nil {
		return &pluginError{Class: "ConfigError", Message: "bad connection string: " + err.Error()}
	}
	// On cancellation, ask the server to cancel the query (not just drop the socket).
	config.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, CancelRequestDelay: 0, DeadlineDelay: time.Second}
	}
	conn, err := pgconn.ConnectConfig(ctx, config)
	if err != nil {
		return &pluginError{Class: "SourceError", Message: "cannot connect to PostgreSQL: " + err.Error(), Transient: true, Cause: err}
	}
	defer conn.Close(context.Background())

	hello, _ := json.Marshal(map[string]any{
		"dativo": "hello", "protocol": protocolVersion, "plugin": "go-postgres-reader", "schema": p.Schema,
	})
	out.Write(append(hello, '\n'))
	if err := out.Flush(); err != nil {
		return err
	}

	cmdLine, err := in.ReadBytes('\n')
	if err != nil { // stdin closed: dativo only wanted the schema
		return nil
	}
	var cmd struct {
		Command   string `json:"command"`
		BatchSize int    `json:"batch_size"`
	}
	if err := json.Unmarshal(cmdLine, &cmd); err != nil {
		return fmt.Errorf("bad command line: %v", err)
	}
	if cmd.Command == "close" {
		return nil
	}
	if cmd.Command != "read" {
		return fmt.Errorf("expected the 'read' or 'close' command, got %q", cmd.Command)
	}
	batchSize := cmd.BatchSize
	if batchSize <= 0 {
		batchSize = 65536
	}
	return stream(ctx, conn, p, schema, batchSize, out)
}

func stream(ctx context.Context, conn *pgconn.PgConn, p *plan, schema *arrow.Schema, batchSize int, out *bufio.Writer) error {
	mem := memory.NewGoAllocator()
	writer := ipc.NewWriter(out, ipc.WithSchema(schema), ipc.WithAllocator(mem))
	builder := array.NewRecordBuilder(mem, schema)
	defer builder.Release()

	nCols := len(p.Columns)
	total := nCols + len(p.ArrayColumns)
	formats := make([]int16, total)
	for i := range formats {
		formats[i] = 1 // binary
	}
	rr := conn.ExecParams(ctx, p.SQL, nil, nil, nil, formats)
	rows := 0
	flush := func() error {
		rec := builder.NewRecordBatch()
		defer rec.Release()
		return writer.Write(rec)
	}
	for rr.NextRow() {
		values := rr.Values()
		for i := range p.Columns {
			if err := appendColumn(builder.Field(i), &p.Columns[i], values[i]); err != nil {
				rr.Close()
				return err
			}
		}
		rows++
		if rows == batchSize {
			if err := flush(); err != nil {
				rr.Close()
				return err
			}
			rows = 0
		}
	}
	if _, err := rr.Close(); err != nil {
		return err
	}
	if rows > 0 {
		if err := flush(); err != nil {
			return err
		}
	}
	if err := writer.Close(); err != nil {
		return err
	}
	return out.Flush()
}

func appendColumn(b array.Builder, c *column, data []byte) error {
	if data == nil {
		b.AppendNull()
		return nil
	}
	if !c.IsArray {
		return appendValue(b, c, data)
	}
	lb := b.(*array.ListBuilder)
	return appendArray(lb, c, data)
}

func appendArray(lb *array.ListBuilder, c *column, data []byte) error {
	if len(data) < 12 {
		return fmt.Errorf("column %q: truncated array value", c.Name)
	}
	ndim := int32(binary.BigEndian.Uint32(data[0:4]))
	lb.Append(true)
	if ndim == 0 {
		return nil
	}
	if ndim > 1 {
		return schemaError(
			fmt.Sprintf("column '%s' (%s) holds a %d-dimensional array; only one-dimensional arrays are supported", c.Name, c.PgType, ndim),
			fmt.Sprintf("unnest or flatten it in a query, or list the column in cast_to_text: [%s]", c.Name))
	}
	count := int(int32(binary.BigEndian.Uint32(data[12:16])))
	pos := 20
	vb := lb.ValueBuilder()
	for i := 0; i < count; i++ {
		if pos+4 > len(data) {
			return fmt.Errorf("column %q: truncated array element", c.Name)
		}
		size := int(int32(binary.BigEndian.Uint32(data[pos : pos+4])))
		pos += 4
		if size < 0 {
			vb.AppendNull()
			continue
		}
		if err := appendValue(vb, c, data[pos:pos+size]); err != nil {
			return err
		}
		pos += size
	}
	return nil
}

func temporalError(c *column) error {
	return schemaError(
		fmt.Sprintf("column '%s' (%s) holds infinity, -infinity or a value after year 294246, which Arrow cannot represent", c.Name, c.PgType),
		fmt.Sprintf("filter or replace those values in a query, or list the column in cast_to_text: [%s]", c.Name))
}

func appendValue(b array.Builder, c *column, data []byte) error {
	switch c.Kind {
	case "int16":
		b.(*array.Int16Builder).Append(int16(binary.BigEndian.Uint16(data)))
	case "int32":
		b.(*array.Int32Builder).Append(int32(binary.BigEndian.Uint32(data)))
	case "int64":
		b.(*array.Int64Builder).Append(int64(binary.BigEndian.Uint64(data)))
	case "float32":
		b.(*array.Float32Builder).Append(math.Float32frombits(binary.BigEndian.Uint32(data)))
	case "float64":
		b.(*array.Float64Builder).Append(math.Float64frombits(binary.BigEndian.Uint64(data)))
	case "bool":
		b.(*array.BooleanBuilder).Append(data[0] != 0)
	case "text":
		b.(*array.StringBuilder).BinaryBuilder.Append(data)
	case "bytea":
		b.(*array.BinaryBuilder).Append(data)
	case "uuid":
		var u [16]byte
		copy(u[:], data)
		b.(*extensions.UUIDBuilder).AppendBytes(u)
	case "date":
		days := int32(binary.BigEndian.Uint32(data))
		if days == math.MaxInt32 || days == math.MinInt32 || days > math.MaxInt32-pgEpochDays {
			return temporalError(c)
		}
		b.(*array.Date32Builder).Append(arrow.Date32(days + pgEpochDays))
	case "time":
		b.(*array.Time64Builder).Append(arrow.Time64(int64(binary.BigEndian.Uint64(data))))
	case "timestamp", "timestamptz":
		us := int64(binary.BigEndian.Uint64(data))
		if us == math.MaxInt64 || us == math.MinInt64 || us > math.MaxInt64-pgEpochMicros {
			return temporalError(c)
		}
		b.(*array.TimestampBuilder).Append(arrow.Timestamp(us + pgEpochMicros))
	case "numeric":
		num, err := parseDecimal(string(data), c)
		if err != nil {
			return err
		}
		b.(*array.Decimal128Builder).Append(num)
	default:
		return fmt.Errorf("column %q: unknown kind %q in the plan", c.Name, c.Kind)
	}
	return nil
}

func numericError(c *column, value string) error {
	if c.Unconstrained {
		return schemaError(
			fmt.Sprintf("column '%s' is numeric without a declared precision and holds %s, which does not fit decimal(%d,%d) exactly (values are never rounded)", c.Name, value, c.Precision, c.Scale),
			fmt.Sprintf("declare the type in a query, e.g. \"%s\"::numeric(p,s), or list the column in cast_to_text: [%s]", strings.ReplaceAll(c.Name, `"`, `""`), c.Name))
	}
	return schemaError(
		fmt.Sprintf("column '%s' (%s) holds %s, which decimal(%d,%d) cannot represent", c.Name, c.PgType, value, c.Precision, c.Scale),
		fmt.Sprintf("filter it out in a query or list the column in cast_to_text: [%s]", c.Name))
}

// parseDecimal turns PostgreSQL's text form of a numeric into decimal128(precision, scale), exactly.
func parseDecimal(text string, c *column) (decimal128.Num, error) {
	s := text
	negative := false
	if strings.HasPrefix(s, "-") {
		negative, s = true, s[1:]
	}
	intPart, frac, _ := strings.Cut(s, ".")
	if intPart == "" && frac == "" || strings.ContainsFunc(intPart+frac, func(r rune) bool { return r < '0' || r > '9' }) {
		return decimal128.Num{}, numericError(c, text) // NaN, Infinity, -Infinity
	}
	frac = strings.TrimRight(frac, "0")
	intPart = strings.TrimLeft(intPart, "0")
	if int32(len(frac)) > c.Scale || int32(len(intPart)) > c.Precision-c.Scale {
		return decimal128.Num{}, numericError(c, text)
	}
	digits := intPart + frac + strings.Repeat("0", int(c.Scale)-len(frac))
	value, ok := new(big.Int).SetString("0"+digits, 10)
	if !ok {
		return decimal128.Num{}, numericError(c, text)
	}
	if negative {
		value.Neg(value)
	}
	return decimal128.FromBigInt(value), nil
}
