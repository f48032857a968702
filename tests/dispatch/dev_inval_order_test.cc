// DEV_INVAL ordering across server threads (iomap spec §11.5): a block freed by one request may
// be allocated by a BEGIN on another thread; no mapping naming it (UPSERT or BEGIN reply) may
// reach the kernel before its DEV_INVAL, whichever thread announces it. The Dispatcher runs on
// a real read-write image; a recording sink stands in for the kernel and logs notifications
// and replies in the order they were sent. A test hook pauses the freeing thread between the
// free and the send (and, in the second test, after taking the freed ranges).
#include <fcntl.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "fsserver/dispatch/dispatcher.h"
#include "fsserver/wire/fuse_abi.h"
#include "tests/support/test_util.h"

namespace iomapfs::dispatch {
namespace {

namespace tu = ::iomapfs::testing;

// One message the "kernel" received: a notification (code != 0) or a reply (unique != 0).
struct Event {
  int32_t notify = 0;
  uint64_t unique = 0;
  int32_t error = 0;
  std::vector<std::byte> body;
};

// Replies and notifications of every thread, in one order. Thread-safe.
class RecordingKernel : public ReplySink, public KernelControl {
 public:
  Result<void> Send(std::span<const iovec> iov) override { return Record(iov); }
  KernelControl* control() override { return this; }
  Result<void> Notify(std::span<const iovec> iov) override { return Record(iov); }
  Result<uint32_t> BackingOpen(int, uint32_t) override { return 1u; }
  Result<void> BackingClose(uint32_t) override { return Unexpected(EBUSY); }
  Result<uint64_t> IomapSupport() override { return abi::FUSE_IOMAP_SUPPORT_FILEIO; }
  Result<void> SetBlocksize(uint32_t, uint32_t) override { return {}; }
  Result<void> SetNofs(bool) override { return {}; }
  Result<void> AttachBpf(int) override { return Unexpected(EOPNOTSUPP); }

  std::vector<Event> events() {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }
  // The reply to `unique`, if sent.
  std::optional<Event> Reply(uint64_t unique) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Event& e : events_) {
      if (e.notify == 0 && e.unique == unique) return e;
    }
    return std::nullopt;
  }

 private:
  Result<void> Record(std::span<const iovec> iov) {
    std::vector<std::byte> msg;
    for (const iovec& v : iov) {
      auto* p = static_cast<const std::byte*>(v.iov_base);
      msg.insert(msg.end(), p, p + v.iov_len);
    }
    abi::fuse_out_header h;
    std::memcpy(&h, msg.data(), sizeof(h));
    Event e;
    if (h.unique == 0) {
      e.notify = h.error;
    } else {
      e.unique = h.unique;
      e.error = h.error;
    }
    e.body.assign(msg.begin() + sizeof(h), msg.end());
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(e));
    return {};
  }
  std::mutex mu_;
  std::vector<Event> events_;
};

// A gate one thread waits at until the test opens it.
class Gate {
 public:
  void Arrive() {
    std::unique_lock<std::mutex> lock(mu_);
    arrived_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
  }
  void WaitArrived() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return arrived_; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool arrived_ = false, open_ = false;
};

class DispatchDevInvalTest : public ::testing::Test {
 protected:
  void Begin(DevInvalPoint pause_at) {
    image_ = dir_.Sub("fs.img");
    ASSERT_EQ(tu::MakeImage(image_, 32 << 20, "ext4", {"-b", "4096"}), "");
    ext2::OpenOptions open;
    open.read_write = true;
    std::string why;
    auto e2 = ext2::Ext2Fs::Open(image_, open, &why);
    ASSERT_TRUE(e2) << why;
    fs_ = std::make_unique<ext4::Filesystem>(std::move(*e2), ext4::Options{});
    DispatcherOptions d;
    d.read_only = false;
    d.iomap.retry_cache = false;  // replies carry the mapping itself
    d.iomap.test_dev_inval_hook = [this, pause_at](DevInvalPoint p) {
      if (p == pause_at && std::this_thread::get_id() == paused_thread_.load()) gate_.Arrive();
    };
    disp_ = std::make_unique<Dispatcher>(*fs_, d);

    abi::fuse_init_in init{};
    init.major = 7;
    init.minor = abi::FUSE_IOMAP_KERNEL_MINOR_VERSION;
    const uint64_t flags = abi::FUSE_INIT_EXT | abi::FUSE_IOMAP | abi::FUSE_ATOMIC_O_TRUNC;
    init.flags = static_cast<uint32_t>(flags);
    init.flags2 = static_cast<uint32_t>(flags >> 32);
    ASSERT_EQ(Call(abi::FUSE_INIT, 0, Bytes(init)).error, 0);
    ASSERT_TRUE(disp_->iomap().enabled());
    abi::fuse_iomap_config_in cfg{};
    cfg.flags = 0x7F;
    cfg.maxbytes = INT64_MAX;
    ASSERT_EQ(Call(abi::FUSE_IOMAP_CONFIG, 0, Bytes(cfg)).error, 0);
    ASSERT_EQ(disp_->iomap().backing_id(), 1u);
  }

  void TearDown() override {
    if (fs_ == nullptr) return;
    disp_.reset();
    EXPECT_TRUE(fs_->Close());
    std::string out;
    EXPECT_TRUE(tu::FsckClean(image_, &out)) << out;
  }

  template <class T>
  static std::vector<std::byte> Bytes(const T& v, std::string_view name = {}) {
    std::vector<std::byte> b(sizeof(T));
    std::memcpy(b.data(), &v, sizeof(T));
    if (!name.empty()) {
      auto n = std::as_bytes(std::span<const char>(name));
      b.insert(b.end(), n.begin(), n.end());
      b.push_back(std::byte{0});
    }
    return b;
  }

  // Sends one request on the calling thread. Returns: its reply event.
  Event Call(uint32_t opcode, uint64_t nodeid, const std::vector<std::byte>& arg) {
    abi::fuse_in_header h{};
    h.opcode = opcode;
    h.unique = next_unique_.fetch_add(2);
    h.nodeid = nodeid;
    std::vector<std::byte> msg(sizeof(h));
    msg.insert(msg.end(), arg.begin(), arg.end());
    h.len = static_cast<uint32_t>(msg.size());
    std::memcpy(msg.data(), &h, sizeof(h));
    disp_->Handle(msg, kernel_);
    std::optional<Event> r = kernel_.Reply(h.unique);
    EXPECT_TRUE(r) << "no reply to opcode " << opcode;
    return r.value_or(Event{});
  }

  // CREATE: returns the node id.
  uint64_t Create(const std::string& name) {
    abi::fuse_create_in in{};
    in.flags = O_RDWR | O_CREAT;
    in.mode = 0100644;
    Event r = Call(abi::FUSE_CREATE, abi::FUSE_ROOT_ID, Bytes(in, name));
    EXPECT_EQ(r.error, 0);
    abi::fuse_entry_out e{};
    if (r.body.size() >= sizeof(e)) std::memcpy(&e, r.body.data(), sizeof(e));
    return e.nodeid;
  }

  // BEGIN for `opflags` at [pos, pos + count). Returns: the reply event.
  Event BeginOp(uint64_t node, uint64_t pos, uint64_t count, uint32_t opflags) {
    abi::fuse_iomap_begin_in in{};
    in.opflags = opflags;
    in.attr_ino = node;
    in.pos = pos;
    in.count = count;
    return Call(abi::FUSE_IOMAP_BEGIN, node, Bytes(in));
  }
  static abi::fuse_iomap_io ReadSlot(const Event& e) {
    abi::fuse_iomap_begin_out out{};
    EXPECT_EQ(e.body.size(), sizeof(out));
    if (e.body.size() == sizeof(out)) std::memcpy(&out, e.body.data(), sizeof(out));
    return out.read;
  }

  // A file of `bytes` written through BEGIN (allocating UNWRITTEN) and IOEND (converting).
  // Returns: its device byte ranges.
  std::vector<std::pair<uint64_t, uint64_t>> WriteFile(uint64_t node, uint64_t bytes) {
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (uint64_t pos = 0; pos < bytes;) {
      Event b =
          BeginOp(node, pos, bytes - pos, abi::FUSE_IOMAP_OP_WRITE | abi::FUSE_IOMAP_OP_DIRECT);
      EXPECT_EQ(b.error, 0);
      abi::fuse_iomap_io m = ReadSlot(b);
      if (b.error != 0 || m.length == 0) break;
      const uint64_t len = std::min(m.offset + m.length, bytes) - pos;
      ranges.emplace_back(m.addr + (pos - m.offset), len);
      abi::fuse_iomap_ioend_in io{};
      io.flags = abi::FUSE_IOMAP_IOEND_UNWRITTEN;
      io.attr_ino = node;
      io.pos = pos;
      io.written = len;
      EXPECT_EQ(Call(abi::FUSE_IOMAP_IOEND, node, Bytes(io)).error, 0);
      pos += len;
    }
    return ranges;
  }

  // Every mapping of a device byte in `freed` that reached the kernel (UPSERT read slot, BEGIN
  // reply read slot) from event `first` on came after a DEV_INVAL covering that byte's block.
  // Returns: whether any mapping named a freed block at all (the test is void otherwise).
  bool CheckOrder(const std::vector<std::pair<uint64_t, uint64_t>>& freed, size_t first) {
    const uint64_t bs = fs_->block_size();
    auto in_freed = [&](uint64_t a) {
      for (auto [off, len] : freed) {
        if (a >= off && a < off + len) return true;
      }
      return false;
    };
    std::vector<std::pair<uint64_t, uint64_t>> announced;
    auto is_announced = [&](uint64_t a) {
      for (auto [off, len] : announced) {
        if (a >= off && a < off + len) return true;
      }
      return false;
    };
    bool reused = false;
    const std::vector<Event> events = kernel_.events();
    for (size_t i = first; i < events.size(); ++i) {
      const Event& e = events[i];
      abi::fuse_iomap_io m{};
      if (e.notify == abi::FUSE_NOTIFY_IOMAP_DEV_INVAL) {
        abi::fuse_iomap_dev_inval_out d;
        std::memcpy(&d, e.body.data(), sizeof(d));
        announced.emplace_back(d.range.offset, d.range.length);
        continue;
      } else if (e.notify == abi::FUSE_NOTIFY_IOMAP_UPSERT_MAPPINGS) {
        abi::fuse_iomap_upsert_mappings_out u;
        std::memcpy(&u, e.body.data(), sizeof(u));
        m = u.read;
      } else if (e.notify == 0 && e.error == 0 &&
                 e.body.size() == sizeof(abi::fuse_iomap_begin_out)) {
        m = ReadSlot(e);
      } else {
        continue;
      }
      if (m.type != abi::FUSE_IOMAP_TYPE_MAPPED && m.type != abi::FUSE_IOMAP_TYPE_UNWRITTEN) {
        continue;
      }
      for (uint64_t a = m.addr; a < m.addr + m.length; a += bs) {
        if (!in_freed(a)) continue;
        reused = true;
        EXPECT_TRUE(is_announced(a))
            << "a mapping of freed device byte " << a << " reached the kernel before its DEV_INVAL";
      }
    }
    return reused;
  }

  tu::TempDir dir_;
  std::string image_;
  std::unique_ptr<ext4::Filesystem> fs_;
  std::unique_ptr<Dispatcher> disp_;
  RecordingKernel kernel_;
  std::atomic<uint64_t> next_unique_{2};
  // Truncates `node` to 0 on a new thread, the one the DEV_INVAL hook pauses.
  std::thread TruncateToZeroOnPausedThread(uint64_t node) {
    return std::thread([this, node] {
      paused_thread_.store(std::this_thread::get_id());
      abi::fuse_setattr_in sa{};
      sa.valid = abi::FATTR_SIZE;
      sa.size = 0;
      EXPECT_EQ(Call(abi::FUSE_SETATTR, node, Bytes(sa)).error, 0);
    });
  }

  std::atomic<std::thread::id> paused_thread_{};
  Gate gate_;
};

// The freeing thread (a truncate) is paused after the free, before it took anything from the
// freed-block log. A BEGIN on another thread allocates those blocks: it must announce them
// itself before its UPSERT and its reply.
TEST_F(DispatchDevInvalTest, BeginReusingFreedBlocksAnnouncesThemFirst) {
  Begin(DevInvalPoint::kBeforeTake);
  const uint64_t a = Create("a");
  const uint64_t b = Create("b");
  auto a_blocks = WriteFile(a, 256 << 10);
  ASSERT_FALSE(a_blocks.empty());
  const size_t before = kernel_.events().size();

  std::thread freeing = TruncateToZeroOnPausedThread(a);
  gate_.WaitArrived();  // a's blocks are free; their DEV_INVAL is not sent
  Event r = BeginOp(b, 0, 256 << 10, abi::FUSE_IOMAP_OP_WRITE | abi::FUSE_IOMAP_OP_DIRECT);
  EXPECT_EQ(r.error, 0);
  gate_.Open();
  freeing.join();
  EXPECT_TRUE(CheckOrder(a_blocks, before))
      << "the BEGIN did not reuse a freed block: nothing tested";
}

// The freeing thread is paused after it took the freed ranges from the log, before it sent
// them. A BEGIN on another thread that reuses those blocks must wait for that DEV_INVAL: its
// reply may not leave while the ranges are taken and unsent.
TEST_F(DispatchDevInvalTest, BeginWaitsForDevInvalInFlightOnAnotherThread) {
  Begin(DevInvalPoint::kTaken);
  const uint64_t a = Create("a");
  const uint64_t b = Create("b");
  auto a_blocks = WriteFile(a, 256 << 10);
  ASSERT_FALSE(a_blocks.empty());
  const size_t before = kernel_.events().size();

  std::thread freeing = TruncateToZeroOnPausedThread(a);
  gate_.WaitArrived();  // a's freed ranges are taken and not sent
  const uint64_t begin_unique = next_unique_.load();
  std::thread allocating(
      [&] { BeginOp(b, 0, 256 << 10, abi::FUSE_IOMAP_OP_WRITE | abi::FUSE_IOMAP_OP_DIRECT); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(kernel_.Reply(begin_unique).has_value())
      << "the BEGIN replied while another thread held unsent DEV_INVALs";
  gate_.Open();
  freeing.join();
  allocating.join();
  EXPECT_TRUE(kernel_.Reply(begin_unique).has_value());
  EXPECT_TRUE(CheckOrder(a_blocks, before))
      << "the BEGIN did not reuse a freed block: nothing tested";
}

}  // namespace
}  // namespace iomapfs::dispatch
