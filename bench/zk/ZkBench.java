// The official Apache ZooKeeper Java client in `switchyard bench zk`: creates N ephemeral
// nodes /bench/n<i> with the async API, reads them all back, prints one JSON line and
// exits WITHOUT closing its session (closing a session that holds a million ephemerals
// makes ZooKeeper write all their paths into one transaction, ZOOKEEPER-4306).
//
// Compiled and run by `switchyard bench zk`; by hand:
//   javac -cp /usr/share/java/zookeeper.jar -d /tmp/zkbench bench/zk/ZkBench.java
//   java -cp /tmp/zkbench:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-nop.jar \
//       ZkBench 127.0.0.1:2181 1000000 64 1000
// A window of 0 sends every request at once (no semaphore: how the client is usually used).

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.zookeeper.AsyncCallback;
import org.apache.zookeeper.CreateMode;
import org.apache.zookeeper.KeeperException;
import org.apache.zookeeper.Watcher;
import org.apache.zookeeper.ZooDefs;
import org.apache.zookeeper.ZooKeeper;

public final class ZkBench {
    private ZkBench() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: ZkBench <connect> <nodes> <payload-bytes> <window, 0 = unbounded>");
            System.exit(2);
        }
        String connect = args[0];
        int nodes = Integer.parseInt(args[1]);
        int payloadBytes = Integer.parseInt(args[2]);
        int window = Integer.parseInt(args[3]);
        String client = window > 0 ? "java" : "java-unbounded";

        byte[] payload = new byte[payloadBytes];
        Arrays.fill(payload, (byte) 'x');

        CountDownLatch connected = new CountDownLatch(1);
        ZooKeeper zk = new ZooKeeper(connect, 6000, event -> {
            if (event.getState() == Watcher.Event.KeeperState.SyncConnected) {
                connected.countDown();
            }
        });
        if (!connected.await(60, TimeUnit.SECONDS)) {
            System.err.println("ZkBench: no ZooKeeper session within 60 s at " + connect);
            System.exit(1);
        }
        try {
            zk.create("/bench", new byte[0], ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT);
        } catch (KeeperException.NodeExistsException e) {
            // A fresh server has none; tolerate a rerun against the same one.
        }

        Semaphore slots = window > 0 ? new Semaphore(window) : null;
        AtomicLong errors = new AtomicLong();
        AtomicReference<String> firstError = new AtomicReference<>();

        // Creates.
        CountDownLatch created = new CountDownLatch(nodes);
        AsyncCallback.StringCallback onCreate = (rc, path, ctx, name) -> {
            if (rc != KeeperException.Code.OK.intValue()) {
                errors.incrementAndGet();
                firstError.compareAndSet(null, "create " + path + ": " + KeeperException.Code.get(rc));
            }
            if (slots != null) {
                slots.release();
            }
            created.countDown();
        };
        long start = System.nanoTime();
        for (int i = 0; i < nodes; i++) {
            if (slots != null) {
                slots.acquire();
            }
            zk.create("/bench/n" + i, payload, ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.EPHEMERAL,
                    onCreate, null);
        }
        created.await();
        double createSecs = (System.nanoTime() - start) / 1e9;

        // Reads.
        CountDownLatch read = new CountDownLatch(nodes);
        AsyncCallback.DataCallback onData = (rc, path, ctx, data, stat) -> {
            if (rc != KeeperException.Code.OK.intValue()) {
                errors.incrementAndGet();
                firstError.compareAndSet(null, "getData " + path + ": " + KeeperException.Code.get(rc));
            } else if (data == null || data.length != payloadBytes) {
                errors.incrementAndGet();
                firstError.compareAndSet(null, "getData " + path + ": wrong payload length");
            }
            if (slots != null) {
                slots.release();
            }
            read.countDown();
        };
        start = System.nanoTime();
        for (int i = 0; i < nodes; i++) {
            if (slots != null) {
                slots.acquire();
            }
            zk.getData("/bench/n" + i, false, onData, null);
        }
        read.await();
        double readSecs = (System.nanoTime() - start) / 1e9;

        if (firstError.get() != null) {
            System.err.println("ZkBench: " + errors.get() + " errors; first: " + firstError.get());
        }
        System.out.println("{\"client\":\"" + client + "\",\"nodes\":" + nodes
                + ",\"create_secs\":" + createSecs + ",\"read_secs\":" + readSecs
                + ",\"errors\":" + errors.get() + ",\"peak_rss_bytes\":" + peakRssBytes() + "}");
        System.out.flush();
        // No zk.close(): the benchmark kills the server before this session could close.
        System.exit(0);
    }

    /** VmHWM of /proc/self/status, in bytes (0 when unreadable). */
    private static long peakRssBytes() {
        try {
            for (String line : Files.readAllLines(Paths.get("/proc/self/status"), StandardCharsets.UTF_8)) {
                if (line.startsWith("VmHWM:")) {
                    String kb = line.substring("VmHWM:".length()).trim().split("\\s+")[0];
                    return Long.parseLong(kb) * 1024;
                }
            }
        } catch (Exception e) {
            System.err.println("ZkBench: cannot read /proc/self/status: " + e);
        }
        return 0;
    }
}
