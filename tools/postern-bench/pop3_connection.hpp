// pop3_connection: the client side of one POP3 connection for postern-bench.
//
// Reads replies strictly and trusts nothing the server says: status lines must start with +OK or
// -ERR and end in CRLF, multi-line bodies are undone (dot-unstuffed) while their octets are
// counted, listings are parsed with std::from_chars. Every awaitable returns false on failure
// and leaves the cause in fault(); the caller then closes the connection and counts the fault.
//
// Threading and ownership: used from the single thread running the io_context. A connection
// owns its socket and, after a TLS handshake, the TLS state on top of it. String views it
// returns stay valid until the next read on the same connection. Timeouts are enforced from
// outside: arm() sets a deadline and connection_registry::sweep() closes connections past it.
//
// GCC 12 miscompiles `if (!co_await f()) co_return ...;` (the frame is resumed with a bad
// state: SIGILL or a wild `this`), and is shaky with co_await inside larger expressions (||,
// std::tie assignments). Every await in postern-bench is therefore a statement of its own or
// the initializer of an if: `if (const bool ok = co_await f(); !ok) { ... }`.
#pragma once

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/ssl.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace postern::bench {

using tcp = asio::ip::tcp;
using bench_clock = std::chrono::steady_clock;

// Why an operation failed; each has a stable name used as a JSON key.
enum class fault : std::uint8_t {
  none,
  connect_refused,  // nothing listens on the port
  connect,          // any other connect failure (EMFILE, EADDRNOTAVAIL, ...)
  timeout,          // no complete reply within --timeout
  eof,              // the server closed the connection in the middle of a reply or session
  reset,            // connection reset or broken pipe
  io,               // any other socket error
  tls,              // TLS handshake or record failure
  greeting,         // the greeting was -ERR
  in_use,           // -ERR [IN-USE]: the maildrop is locked by another session
  auth,             // USER or PASS rejected ([AUTH] or no response code)
  sys_temp,         // -ERR [SYS/TEMP]
  sys_perm,         // -ERR [SYS/PERM]
  err_reply,        // -ERR to a command that should have succeeded
  protocol,         // a reply that is not POP3: bad status line, bad listing, bad number
  line_too_long,    // a reply line longer than the read buffer
  bare_lf,          // a line ended in LF without CR
  octet_mismatch,   // RETR sent a different number of octets than its "+OK n octets" said
  size_mismatch,    // RETR sent a different number of octets than LIST said
  count_mismatch,   // UIDL or LIST listed a different number of messages than STAT
  bad_uidl,         // a UIDL that is empty, too long, not printable or repeated
  empty_maildrop,   // no message to RETR
  data_after_quit,  // bytes after the QUIT reply
  stls_injection,   // bytes after the STLS reply, before the handshake
  count_
};
inline constexpr std::size_t fault_count = static_cast<std::size_t>(fault::count_);
std::string_view fault_name(fault f) noexcept;

// What a multi-line body held once unstuffed.
struct body_result {
  std::uint64_t octets = 0;  // bytes including CRLFs, excluding stuffing dots and terminator
  std::uint64_t lines = 0;
  bool bare_lf = false;
};

// Where body octets are counted while they arrive (for MB/s over a time window): adds to
// *total only while *active is true. Both pointers may be null.
struct octet_sink {
  const bool* active = nullptr;
  std::uint64_t* total = nullptr;
  void add(std::uint64_t n) const noexcept {
    if (active != nullptr && *active && total != nullptr) {
      *total += n;
    }
  }
};

class pop3_connection;

// All live connections, so one periodic sweep can enforce every deadline.
class connection_registry {
 public:
  // Closes every connection whose deadline has passed (its pending operation then fails with
  // fault::timeout). Returns how many were closed.
  std::size_t sweep(bench_clock::time_point now) noexcept;
  // Closes every connection, counting none as timed out.
  void close_all() noexcept;
  std::size_t size() const noexcept { return size_; }

 private:
  friend class pop3_connection;
  pop3_connection* head_ = nullptr;
  std::size_t size_ = 0;
};

// A LIST or UIDL listing. Unique-ids live in one string, so reading a listing again into the
// same object allocates nothing once it has grown to size.
class listing {
 public:
  struct entry {
    std::uint64_t number = 0;
    std::uint64_t size = 0;        // LIST only
    std::uint32_t uid_offset = 0;  // UIDL only: where the unique-id starts in the pool
    std::uint32_t uid_length = 0;
  };
  void clear() noexcept {
    entries_.clear();
    uids_.clear();
  }
  std::size_t size() const noexcept { return entries_.size(); }
  bool empty() const noexcept { return entries_.empty(); }
  const entry& operator[](std::size_t i) const noexcept { return entries_[i]; }
  auto begin() const noexcept { return entries_.begin(); }
  auto end() const noexcept { return entries_.end(); }
  // Valid until the listing is cleared or added to.
  std::string_view uid(const entry& e) const noexcept {
    return std::string_view(uids_).substr(e.uid_offset, e.uid_length);
  }
  void add_size(std::uint64_t number, std::uint64_t size) {
    entries_.push_back({number, size, 0, 0});
  }
  void add_uid(std::uint64_t number, std::string_view uid) {
    entries_.push_back({number, 0, static_cast<std::uint32_t>(uids_.size()),
                        static_cast<std::uint32_t>(uid.size())});
    uids_.append(uid);
  }
  // Whether no unique-id appears twice; `scratch` is reused between calls.
  bool has_unique_uids(std::vector<std::string_view>& scratch) const;

 private:
  std::vector<entry> entries_;
  std::string uids_;
};

// The wire form of a command: the line and its CRLF, built once and sent as it is.
class command_line {
 public:
  command_line() = default;
  explicit command_line(std::string_view line) { set(line); }
  void set(std::string_view line) {
    wire_.assign(line);
    wire_.append("\r\n");
  }
  std::string_view wire() const noexcept { return wire_; }

 private:
  std::string wire_;
};

class pop3_connection {
 public:
  // buffer_size: the read buffer, which also bounds the longest reply line (at least 1 KiB).
  // It is allocated once and kept across reset(): a client reuses one connection object for
  // every session it runs.
  pop3_connection(const asio::any_io_executor& ex, connection_registry& registry,
                  std::size_t buffer_size);
  ~pop3_connection();
  pop3_connection(const pop3_connection&) = delete;
  pop3_connection& operator=(const pop3_connection&) = delete;

  // Closes the socket and forgets everything about the last connection but the buffer.
  void reset() noexcept;

  // Connects to `to`, from `source` when it is not unspecified, with TCP_NODELAY set.
  // wait false: the connection is started and the call returns at once; the first read then
  // waits for it, and a refused connection fails that read with fault::connect_refused (a
  // POP3 client waits for the greeting anyway, so this saves the reactor round trip and the
  // SO_ERROR query). wait true: returns once the connection is established (TLS first).
  asio::awaitable<bool> connect(const tcp::endpoint& to, const asio::ip::address& source,
                                bool wait);
  // Starts TLS as a client without verifying the server's certificate (loopback benchmarking
  // only). Fails with fault::stls_injection if bytes were already buffered after the STLS reply.
  asio::awaitable<bool> handshake(asio::ssl::context& ctx);

  // Reads one status line. True when it was +OK or -ERR (see is_ok()); any other line fails
  // with fault::protocol.
  asio::awaitable<bool> read_status();
  // Sends `wire` (a whole command, CRLF included) and reads the status line; a -ERR reply
  // fails with the fault named by its response code, else with on_err.
  asio::awaitable<bool> command(std::string_view wire, fault on_err);
  asio::awaitable<bool> command(const command_line& c, fault on_err) {
    return command(c.wire(), on_err);
  }
  // The two halves of command(), for pipelining (RFC 2449 section 6.6): send() writes one or
  // more whole commands without waiting for anything; reply() reads the next status line and
  // fails on -ERR like command() does. Replies come back in the order the commands were sent.
  asio::awaitable<bool> send(std::string_view wire);
  asio::awaitable<bool> reply(fault on_err);
  // Sends CAPA and reads the capability list; `pipelining` tells whether it names PIPELINING.
  // A -ERR reply (a server without RFC 2449) is no failure: it advertises nothing.
  asio::awaitable<bool> capa(bool& pipelining);
  // Reads a multi-line body up to the terminating ".CRLF", unstuffing and counting it.
  asio::awaitable<bool> read_body(body_result& out, octet_sink sink);
  // Reads a LIST (with_uid false) or UIDL listing into out, checking every line's syntax.
  asio::awaitable<bool> read_listing(listing& out, bool with_uid);
  // command() then read_listing(): "LIST\r\n" or "UIDL\r\n" in full.
  asio::awaitable<bool> listing_command(std::string_view wire, listing& out, bool with_uid);
  // Reads until the server closes; any byte received fails with fault::data_after_quit.
  asio::awaitable<bool> read_to_eof();

  bool is_ok() const noexcept { return ok_; }
  // The last status line without its CRLF; valid until the next read.
  std::string_view status_line() const noexcept { return status_; }
  // The number at the start of the text of the last +OK line ("+OK 3 1200" -> 3), if any.
  bool status_number(std::uint64_t& out, std::size_t index = 0) const noexcept;

  fault failure() const noexcept { return fault_; }
  bool fail(fault f) noexcept;

  // Sets the deadline of the operations that follow, from a clock reading the caller already
  // has (one clock read per operation); disarm() removes it.
  void arm(bench_clock::time_point now, bench_clock::duration timeout) noexcept {
    deadline_ = now + timeout;
  }
  void arm(bench_clock::duration timeout) noexcept { arm(bench_clock::now(), timeout); }
  void disarm() noexcept { deadline_ = bench_clock::time_point::max(); }
  void close() noexcept;
  bool is_open() const noexcept { return socket_.is_open(); }

 private:
  friend class connection_registry;

  enum class line_status { line, need_more, bad };
  // Takes the next CRLF-terminated line out of the buffer, if one is there.
  line_status take_line(std::string_view& line) noexcept;
  // The next line of a multi-line reply, dot-unstuffed, reading more as needed: `line` for a
  // line, `need_more` at the terminating ".", `bad` on a fault.
  asio::awaitable<line_status> next_multiline(std::string_view& line);
  // Checks the status line in `line`; false (fault::protocol) when it is neither +OK nor -ERR.
  bool parse_status(std::string_view line) noexcept;
  enum class send_status { sent, partial, failed };
  // Sends what the socket takes at once; `wire` keeps what is left (partial).
  send_status send_now(std::string_view& wire) noexcept;
  asio::awaitable<bool> send_rest(std::string_view wire);
  asio::awaitable<bool> fill();
  fault classify(const std::error_code& ec, bool in_tls) const noexcept;

  tcp::socket socket_;
  std::unique_ptr<asio::ssl::stream<tcp::socket&>> tls_;
  std::unique_ptr<char[]> buf_;  // not zeroed: only bytes the socket wrote are read
  std::size_t capacity_ = 0;
  std::size_t begin_ = 0;  // unread bytes are buf_[begin_, end_)
  std::size_t end_ = 0;
  std::string_view status_;
  bool ok_ = false;
  bool connecting_ = false;  // connect(wait = false) started a connection nothing has read yet
  fault fault_ = fault::none;
  bool timed_out_ = false;
  bench_clock::time_point deadline_ = bench_clock::time_point::max();

  connection_registry& registry_;
  pop3_connection* prev_ = nullptr;
  pop3_connection* next_ = nullptr;
};

}  // namespace postern::bench
