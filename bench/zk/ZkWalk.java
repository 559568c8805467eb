// The official Apache ZooKeeper Java client walking a subtree, as a tree cache's initial
// load does (Curator's TreeCache reads each node the same way): getData of every node
// and getChildren of every node that has children, async, at most <window> requests in
// flight. Prints one JSON line (nodes, bytes, seconds, errors, peak RSS) and exits.
//
// Run by `switchyard bench orchestrator` as the peer of an orchestrator's start; by hand:
//   javac -cp /usr/share/java/zookeeper.jar -d /tmp/zkbench bench/zk/ZkWalk.java
//   java -cp /tmp/zkbench:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-nop.jar \
//       ZkWalk 127.0.0.1:2181 /switchyard/bench/shards 1000

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.zookeeper.AsyncCallback;
import org.apache.zookeeper.KeeperException;
import org.apache.zookeeper.Watcher;
import org.apache.zookeeper.ZooKeeper;

public final class ZkWalk {
    private ZkWalk() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: ZkWalk <connect> <root> <window>");
            System.exit(2);
        }
        String connect = args[0];
        String root = args[1];
        int window = Integer.parseInt(args[2]);

        CountDownLatch connected = new CountDownLatch(1);
        ZooKeeper zk = new ZooKeeper(connect, 6000, event -> {
            if (event.getState() == Watcher.Event.KeeperState.SyncConnected) {
                connected.countDown();
            }
        });
        if (!connected.await(60, TimeUnit.SECONDS)) {
            System.err.println("ZkWalk: no ZooKeeper session within 60 s at " + connect);
            System.exit(1);
        }

        Semaphore slots = new Semaphore(window);
        LinkedBlockingQueue<String> queue = new LinkedBlockingQueue<>();
        // Paths queued or being read; the walk ends when it drops to 0.
        AtomicLong pending = new AtomicLong(1);
        AtomicLong nodes = new AtomicLong();
        AtomicLong bytes = new AtomicLong();
        AtomicLong errors = new AtomicLong();
        AtomicReference<String> firstError = new AtomicReference<>();

        AsyncCallback.ChildrenCallback onChildren = (rc, path, ctx, children) -> {
            if (rc == KeeperException.Code.OK.intValue()) {
                String prefix = path.equals("/") ? "/" : path + "/";
                for (String child : children) {
                    pending.incrementAndGet();
                    queue.add(prefix + child);
                }
            } else if (rc != KeeperException.Code.NONODE.intValue()) {
                errors.incrementAndGet();
                firstError.compareAndSet(null, "getChildren " + path + ": " + KeeperException.Code.get(rc));
            }
            pending.decrementAndGet();
        };
        AsyncCallback.DataCallback onData = (rc, path, ctx, data, stat) -> {
            if (rc == KeeperException.Code.OK.intValue()) {
                nodes.incrementAndGet();
                bytes.addAndGet(data == null ? 0 : data.length);
                if (stat.getNumChildren() > 0) {
                    // Listed without a slot: the event thread must not block, and
                    // parents are few.
                    pending.incrementAndGet();
                    zk.getChildren(path, false, onChildren, null);
                }
            } else if (rc != KeeperException.Code.NONODE.intValue()) {
                errors.incrementAndGet();
                firstError.compareAndSet(null, "getData " + path + ": " + KeeperException.Code.get(rc));
            }
            slots.release();
            pending.decrementAndGet();
        };

        long start = System.nanoTime();
        queue.add(root);
        while (pending.get() > 0) {
            String path = queue.poll(5, TimeUnit.MILLISECONDS);
            if (path == null) {
                continue;
            }
            slots.acquire();
            zk.getData(path, false, onData, null);
        }
        double secs = (System.nanoTime() - start) / 1e9;

        if (firstError.get() != null) {
            System.err.println("ZkWalk: " + errors.get() + " errors; first: " + firstError.get());
        }
        System.out.println("{\"client\":\"java-walk\",\"nodes\":" + nodes.get()
                + ",\"bytes\":" + bytes.get() + ",\"secs\":" + secs
                + ",\"errors\":" + errors.get() + ",\"peak_rss_bytes\":" + peakRssBytes() + "}");
        System.out.flush();
        zk.close();
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
            System.err.println("ZkWalk: cannot read /proc/self/status: " + e);
        }
        return 0;
    }
}
