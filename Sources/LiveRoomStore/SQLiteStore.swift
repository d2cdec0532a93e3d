import Crypto
import Foundation
import GRDB
import Synchronization
import LiveRoomDomain
import LiveRoomMessages

/// The embedded store: SQLite through GRDB in WAL mode, `synchronous = FULL`, so a write that
/// returned survives `kill -9` and power loss.
///
/// Stream keys are encrypted at rest with AES-GCM (bound to their room id) under a master key
/// kept beside the database in `master.key` (mode 0600). Keys must be readable again because
/// the API shows the current key, as an admin list does; hashing would lose that.
public final class SQLiteStore: RoomStore, ViewerStore, AudienceStore, DestinationStore, Sendable {
    /// A pool normally; a read-only connection when the data directory cannot be written.
    let pool: any DatabaseWriter
    /// Opened read-only: every write fails with UNAVAILABLE, reads are served.
    public let isReadOnly: Bool
    private let writable = Mutex(true)
    /// The master key's bytes (SymmetricKey itself is not Sendable).
    private let masterKeyBytes: Data
    private var masterKey: SymmetricKey { SymmetricKey(data: masterKeyBytes) }
    public let path: String

    public struct Options: Sendable {
        /// Caps the database size (in pages); tests use it to simulate a full disk.
        public var maxPageCount: Int?
        public init() {}
    }

    public init(directory: String, options: Options = Options()) throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), !isDirectory.boolValue {
            throw RoomError(.invalidArgument, "the data directory \(directory) is a file, not a directory; set data_dir to a directory")
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw RoomError(.unavailable, "cannot create the data directory \(directory): \((error as NSError).localizedDescription)")
        }
        path = (directory as NSString).appendingPathComponent("liveroom.sqlite")
        masterKeyBytes = try Self.loadOrCreateMasterKey(directory)
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        let maxPages = options.maxPageCount
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
            if let maxPages { try db.execute(sql: "PRAGMA max_page_count = \(maxPages)") }
        }
        do {
            // A file on a read-only mount may still open (its WAL files left by an unclean stop).
            if FileManager.default.fileExists(atPath: path), !FileManager.default.isWritableFile(atPath: path) {
                throw DatabaseError(resultCode: .SQLITE_READONLY, message: "\(path) is not writable")
            }
            let pool = try DatabasePool(path: path, configuration: configuration)
            try Self.migrator.migrate(pool)
            self.pool = pool
            isReadOnly = false
        } catch let error as DatabaseError where Self.isReadOnlyMedium(error) && FileManager.default.fileExists(atPath: path) {
            // A data directory on read-only media (or a disk gone read-only) still has rooms to
            // show: serve reads, refuse writes with a clear reason.
            do {
                pool = try Self.openReadOnly(path)
            } catch {
                throw RoomError(.unavailable, "cannot open the store at \(path) even read-only: \(error)")
            }
            isReadOnly = true
            writable.withLock { $0 = false }
            return
        } catch {
            throw RoomError(.unavailable, "cannot open the store at \(path): \(error)")
        }
        do {
            try backfillKeyDigests()
        } catch {
            throw RoomError(.unavailable, "cannot open the store at \(path): \(error)")
        }
    }

    private static func isReadOnlyMedium(_ error: DatabaseError) -> Bool {
        [.SQLITE_READONLY, .SQLITE_CANTOPEN, .SQLITE_PERM, .SQLITE_IOERR].contains(error.resultCode)
    }

    /// A WAL database can be read without writing only if its -shm file exists; after a clean
    /// stop it does not, and on read-only media it cannot be made. SQLite's `immutable` mode
    /// reads the file as it is.
    private static func openReadOnly(_ path: String) throws -> any DatabaseWriter {
        var configuration = Configuration()
        configuration.readonly = true
        if let pool = try? DatabasePool(path: path, configuration: configuration),
            (try? pool.read({ try Int.fetchOne($0, sql: "SELECT count(*) FROM rooms") })) != nil
        {
            return pool
        }
        let queue = try DatabaseQueue(path: "file:\(path)?immutable=1", configuration: configuration)
        _ = try queue.read { try Int.fetchOne($0, sql: "SELECT count(*) FROM rooms") }
        return queue
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1: rooms, platform rooms, keys, status history") { db in
            try db.execute(sql: """
                CREATE TABLE rooms (
                    id TEXT PRIMARY KEY,
                    request_id TEXT NOT NULL UNIQUE,
                    title TEXT NOT NULL,
                    kind INTEGER NOT NULL,
                    platform_id TEXT NOT NULL,
                    play_mode INTEGER NOT NULL,
                    owner_id TEXT NOT NULL,
                    play_url TEXT NOT NULL,
                    status INTEGER NOT NULL,
                    created_at_ms INTEGER NOT NULL,
                    updated_at_ms INTEGER NOT NULL
                );
                CREATE INDEX rooms_newest_first ON rooms(created_at_ms DESC, id DESC);
                CREATE TABLE platform_rooms (
                    room_id TEXT PRIMARY KEY REFERENCES rooms(id) ON DELETE CASCADE,
                    platform_id TEXT NOT NULL,
                    platform_room_id TEXT NOT NULL,
                    push_server TEXT NOT NULL
                );
                CREATE TABLE stream_keys (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
                    key_box BLOB NOT NULL,
                    expires_at_ms INTEGER NOT NULL,
                    created_at_ms INTEGER NOT NULL,
                    revoked_at_ms INTEGER
                );
                CREATE INDEX stream_keys_current ON stream_keys(room_id) WHERE revoked_at_ms IS NULL;
                CREATE TABLE room_status_history (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
                    status INTEGER NOT NULL,
                    at_ms INTEGER NOT NULL,
                    reason TEXT NOT NULL
                );
                CREATE INDEX room_status_history_by_room ON room_status_history(room_id, id);
                """)
        }
        m.registerMigration("v2: our viewers") { db in
            try db.execute(sql: """
                CREATE TABLE viewers (
                    room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
                    viewer_id TEXT NOT NULL,
                    name TEXT NOT NULL,
                    phone TEXT NOT NULL,
                    online INTEGER NOT NULL,
                    first_entry_ms INTEGER NOT NULL,
                    last_leave_ms INTEGER NOT NULL,
                    times_left INTEGER NOT NULL,
                    watch_ms INTEGER NOT NULL,
                    session_started_ms INTEGER NOT NULL,
                    last_seen_ms INTEGER NOT NULL,
                    PRIMARY KEY (room_id, viewer_id)
                );
                CREATE INDEX viewers_online ON viewers(online) WHERE online = 1;
                ALTER TABLE rooms ADD COLUMN peak_concurrent INTEGER NOT NULL DEFAULT 0;
                """)
        }
        m.registerMigration("v3: platform audience reports") { db in
            try db.execute(sql: """
                CREATE TABLE audience_reports (
                    platform_id TEXT NOT NULL,
                    connector_id TEXT NOT NULL,
                    sequence INTEGER NOT NULL,
                    room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
                    received_at_ms INTEGER NOT NULL,
                    report BLOB NOT NULL,
                    PRIMARY KEY (platform_id, connector_id, sequence)
                ) WITHOUT ROWID;
                CREATE INDEX audience_reports_by_room ON audience_reports(room_id);
                """)
        }
        m.registerMigration("v4: find a room by its stream key") { db in
            // Filled in by `backfillKeyDigests`, which has the master key.
            try db.execute(sql: """
                ALTER TABLE stream_keys ADD COLUMN key_digest BLOB;
                CREATE INDEX stream_keys_by_digest ON stream_keys(key_digest) WHERE revoked_at_ms IS NULL;
                """)
        }
        m.registerMigration("v5: a row health writes to find out whether the store takes writes") { db in
            try db.execute(sql: "CREATE TABLE store_probe (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, pad BLOB)")
        }
        m.registerMigration("v6: audience reports stored a batch per row") { db in
            // One row per (platform, connector, room, arrival) group of a flush: a few rows per
            // transaction instead of one per report. Rows of v3's table stay readable.
            try db.execute(sql: """
                CREATE TABLE audience_batches (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    platform_id TEXT NOT NULL,
                    connector_id TEXT NOT NULL,
                    room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
                    min_sequence INTEGER NOT NULL,
                    max_sequence INTEGER NOT NULL,
                    received_at_ms INTEGER NOT NULL,
                    reports BLOB NOT NULL
                );
                CREATE INDEX audience_batches_by_room ON audience_batches(room_id);
                CREATE INDEX audience_batches_by_connector ON audience_batches(platform_id, connector_id, max_sequence);
                """)
        }
        m.registerMigration("v7: room ids reserved by request id") { db in
            try db.execute(sql: """
                CREATE TABLE room_requests (
                    request_id TEXT PRIMARY KEY,
                    room_id TEXT NOT NULL
                ) WITHOUT ROWID
                """)
        }
        m.registerMigration("v8: ingest, the platform's own ingest, destinations") { db in
            try db.execute(sql: """
                ALTER TABLE rooms ADD COLUMN ingest INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE platform_rooms ADD COLUMN platform_push_server TEXT NOT NULL DEFAULT '';
                ALTER TABLE platform_rooms ADD COLUMN platform_key_box BLOB;
                CREATE INDEX rooms_open_by_ingest ON rooms(ingest) WHERE status != 3;
                CREATE TABLE destinations (
                    id TEXT NOT NULL,
                    room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
                    target_room_id TEXT NOT NULL,
                    url TEXT NOT NULL,
                    key_box BLOB,
                    created_at_ms INTEGER NOT NULL,
                    PRIMARY KEY (room_id, id)
                );
                CREATE UNIQUE INDEX destinations_one_link ON destinations(room_id, target_room_id) WHERE target_room_id != '';
                """)
        }
        m.registerMigration("v9: rooms anyone may play over HTTP") { db in
            try db.execute(sql: "ALTER TABLE rooms ADD COLUMN public_playback INTEGER NOT NULL DEFAULT 0")
        }
        return m
    }

    // MARK: DestinationStore

    public func insertDestination(_ d: DestinationRecord, ignoringDuplicate: Bool) async throws {
        let box = d.streamKey.isEmpty ? nil : try seal(d.streamKey, room: "\(d.roomId)/\(d.id)")
        try await write("add destination \(d.id) to room \(d.roomId)") { db in
            try db.execute(sql: """
                INSERT \(ignoringDuplicate ? "OR IGNORE " : "")INTO destinations (id, room_id, target_room_id, url, key_box, created_at_ms)
                VALUES (?, ?, ?, ?, ?, ?)
                """, arguments: [d.id, d.roomId, d.targetRoomId, d.url, box, d.createdAtMs])
        }
    }

    public func deleteDestination(roomId: String, id: String) async throws -> Bool {
        try await write("remove destination \(id) of room \(roomId)") { db in
            try db.execute(sql: "DELETE FROM destinations WHERE room_id = ? AND id = ?", arguments: [roomId, id])
            return db.changesCount > 0
        }
    }

    public func destinations(roomId: String) async throws -> [DestinationRecord] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM destinations WHERE room_id = ? ORDER BY created_at_ms, id", arguments: [roomId]).map { row in
                let id: String = row["id"]
                let box: Data? = row["key_box"]
                return DestinationRecord(id: id, roomId: roomId, targetRoomId: row["target_room_id"], url: row["url"],
                                         streamKey: try box.map { try self.open($0, room: "\(roomId)/\(id)") } ?? "",
                                         createdAtMs: row["created_at_ms"])
            }
        }
    }

    public func openRooms(ingest: Ingest) async throws -> [String] {
        try await read { db in
            try String.fetchAll(db, sql: "SELECT id FROM rooms WHERE ingest = ? AND status != ? ORDER BY created_at_ms",
                                arguments: [ingest.rawValue, RoomStatus.ended.rawValue])
        }
    }

    public func reserveRoomId(requestId: String, candidate: String) async throws -> String {
        try await write("reserve a room id for request \(requestId)") { db in
            try db.execute(sql: "INSERT INTO room_requests (request_id, room_id) VALUES (?, ?) ON CONFLICT (request_id) DO NOTHING",
                           arguments: [requestId, candidate])
            return try String.fetchOne(db, sql: "SELECT room_id FROM room_requests WHERE request_id = ?", arguments: [requestId]) ?? candidate
        }
    }

    // MARK: AudienceStore

    /// Stores reports the ingestor admitted (it has already told duplicates apart): one row per
    /// (platform, connector, room, arrival) group, the reports in it as `ReportRows`. Reports of
    /// one group make one row even when they arrive interleaved with other rooms' reports.
    /// Returns the last row id written: rows are numbered in commit order (one writer), so it
    /// is the transaction's commit mark.
    public func insertReports(_ reports: [StoredReport]) async throws -> Int64 {
        struct GroupKey: Hashable {
            var platform: String
            var connector: String
            var room: String
            var receivedAtMs: Int64
        }
        var order: [GroupKey] = []
        var groupsInOrder: [[AudienceReport]] = []
        var index: [GroupKey: Int] = [:]
        for r in reports {
            var report = r.report
            report.sequence = r.sequence
            // Consecutive reports of one group (the usual case) are grouped without hashing.
            if let last = order.last, last.receivedAtMs == r.receivedAtMs, last.connector == r.connectorId, last.room == r.roomId,
                last.platform == r.platformId
            {
                groupsInOrder[groupsInOrder.count - 1].append(report)
                continue
            }
            let key = GroupKey(platform: r.platformId, connector: r.connectorId, room: r.roomId, receivedAtMs: r.receivedAtMs)
            if let i = index[key] {
                groupsInOrder[i].append(report)
            } else {
                index[key] = order.count
                order.append(key)
                groupsInOrder.append([report])
            }
        }
        let rows = zip(order, groupsInOrder).map { key, group -> (GroupKey, Int64, Int64, Data) in
            var low = UInt64.max, high = UInt64.min
            for r in group {
                low = min(low, r.sequence)
                high = max(high, r.sequence)
            }
            // Sequences are below 2^63 (checked at the edge), so they keep their order as SQLite integers.
            return (key, Int64(clamping: low), Int64(clamping: high), ReportRows.encode(group))
        }
        return try await write("store audience reports") { db in
            let statement = try db.cachedStatement(sql: """
                INSERT INTO audience_batches (platform_id, connector_id, room_id, min_sequence, max_sequence, received_at_ms, reports)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                """)
            for (key, low, high, blob) in rows {
                try statement.execute(arguments: [key.platform, key.connector, key.room, low, high, key.receivedAtMs, blob])
            }
            return db.lastInsertedRowID
        }
    }

    public func loadReports(roomId: String) async throws -> StoredReports {
        try await read { db in
            let mark = try Int64.fetchOne(db, sql: "SELECT max(id) FROM audience_batches") ?? 0
            var out = try Row.fetchAll(db, sql: "SELECT * FROM audience_reports WHERE room_id = ?", arguments: [roomId]).map { row in
                let blob: Data = row["report"]
                return StoredReport(platformId: row["platform_id"], connectorId: row["connector_id"],
                                    sequence: UInt64(bitPattern: row["sequence"]), roomId: row["room_id"],
                                    receivedAtMs: row["received_at_ms"], report: try AudienceReport(serializedBytes: [UInt8](blob)))
            }
            for row in try Row.fetchAll(db, sql: "SELECT * FROM audience_batches WHERE room_id = ? AND id <= ? ORDER BY id",
                                        arguments: [roomId, mark]) {
                let blob: Data = row["reports"]
                let platform: String = row["platform_id"], connector: String = row["connector_id"], at: Int64 = row["received_at_ms"]
                for report in try ReportRows.decode(blob, connectorId: connector, roomId: roomId) {
                    out.append(StoredReport(platformId: platform, connectorId: connector, sequence: report.sequence, roomId: roomId,
                                            receivedAtMs: at, report: report))
                }
            }
            out.sort { $0.receivedAtMs < $1.receivedAtMs }
            return StoredReports(reports: out, mark: mark)
        }
    }

    public func sequences(platformId: String, connectorId: String, from: UInt64) async throws -> (seen: Set<UInt64>, highest: UInt64?) {
        try await read { db in
            var seen = Set(try Int64.fetchAll(db, sql: """
                SELECT sequence FROM audience_reports WHERE platform_id = ? AND connector_id = ? AND sequence >= ?
                """, arguments: [platformId, connectorId, Int64(bitPattern: from)]).map { UInt64(bitPattern: $0) })
            var highest = try Int64.fetchOne(db, sql: "SELECT max(sequence) FROM audience_reports WHERE platform_id = ? AND connector_id = ?",
                                             arguments: [platformId, connectorId]).map { UInt64(bitPattern: $0) }
            let rows = try Row.fetchAll(db, sql: """
                SELECT max_sequence, reports FROM audience_batches WHERE platform_id = ? AND connector_id = ? AND max_sequence >= ?
                """, arguments: [platformId, connectorId, Int64(bitPattern: from)])
            for row in rows {
                let blob: Data = row["reports"]
                for r in try ReportRows.decode(blob, connectorId: connectorId, roomId: "") where r.sequence >= from { seen.insert(r.sequence) }
            }
            if let top = try Int64.fetchOne(db, sql: "SELECT max(max_sequence) FROM audience_batches WHERE platform_id = ? AND connector_id = ?",
                                            arguments: [platformId, connectorId]).map({ UInt64(bitPattern: $0) }) {
                highest = max(highest ?? 0, top)
            }
            return (seen, highest)
        }
    }

    // MARK: ViewerStore

    public func saveViewers(roomId: String, peakConcurrent: Int64, _ viewers: [ViewerRecord]) async throws {
        try await write("save viewers of \(roomId)") { db in
            try db.execute(sql: "UPDATE rooms SET peak_concurrent = max(peak_concurrent, ?) WHERE id = ?", arguments: [peakConcurrent, roomId])
            for v in viewers {
                try db.execute(sql: """
                    INSERT INTO viewers (room_id, viewer_id, name, phone, online, first_entry_ms, last_leave_ms, times_left, watch_ms, session_started_ms, last_seen_ms)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (room_id, viewer_id) DO UPDATE SET name = excluded.name, phone = excluded.phone, online = excluded.online,
                        last_leave_ms = excluded.last_leave_ms, times_left = excluded.times_left, watch_ms = excluded.watch_ms,
                        session_started_ms = excluded.session_started_ms, last_seen_ms = excluded.last_seen_ms
                    """, arguments: [roomId, v.viewerId, v.name, v.phone, v.online, v.firstEntryMs, v.lastLeaveMs, v.timesLeft,
                                     v.watchMs, v.sessionStartedMs, v.lastSeenMs])
            }
        }
    }

    public func touchOnlineViewers(roomId: String, atMs: Int64) async throws {
        try await write("checkpoint viewers of \(roomId)") { db in
            try db.execute(sql: "UPDATE viewers SET last_seen_ms = ? WHERE room_id = ? AND online = 1", arguments: [atMs, roomId])
        }
    }

    public func loadViewers(roomId: String) async throws -> (peakConcurrent: Int64, viewers: [ViewerRecord]) {
        try await read { db in
            let peak = try Int64.fetchOne(db, sql: "SELECT peak_concurrent FROM rooms WHERE id = ?", arguments: [roomId]) ?? 0
            let rows = try Row.fetchAll(db, sql: "SELECT * FROM viewers WHERE room_id = ?", arguments: [roomId])
            return (peak, rows.map { r in
                ViewerRecord(viewerId: r["viewer_id"], name: r["name"], phone: r["phone"], online: r["online"],
                             firstEntryMs: r["first_entry_ms"], lastLeaveMs: r["last_leave_ms"], timesLeft: r["times_left"],
                             watchMs: r["watch_ms"], sessionStartedMs: r["session_started_ms"], lastSeenMs: r["last_seen_ms"])
            })
        }
    }

    public func closeOutOnlineViewers() async throws -> Int {
        if isReadOnly { return 0 }  // nothing can change, and nobody watched while it could not
        return try await write("close out viewers online at the last stop") { db in
                try db.execute(sql: """
                    UPDATE viewers SET watch_ms = watch_ms + max(0, last_seen_ms - session_started_ms),
                        last_leave_ms = last_seen_ms, times_left = times_left + 1, online = 0
                    WHERE online = 1
                    """)
                return db.changesCount
        }
    }

    // MARK: RoomStore

    public func insert(_ room: RoomRecord) async throws {
        let box = try seal(room.streamKey, room: room.id)
        let platformBox = room.platformStreamKey.isEmpty ? nil : try seal(room.platformStreamKey, room: "\(room.id)#platform")
        let digest = keyDigest(room.streamKey)
        try await write("create room \(room.id)") { db in
            try db.execute(sql: """
                INSERT INTO rooms (id, request_id, title, kind, platform_id, play_mode, owner_id, play_url, status, created_at_ms, updated_at_ms,
                                   ingest, public_playback)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [room.id, room.requestId, room.title, room.kind.rawValue, room.platformId, room.playMode.rawValue,
                                 room.ownerId, room.playURL, room.status.rawValue, room.createdAtMs, room.updatedAtMs, room.ingest.rawValue,
                                 room.publicPlayback])
            try db.execute(sql: """
                INSERT INTO platform_rooms (room_id, platform_id, platform_room_id, push_server, platform_push_server, platform_key_box)
                VALUES (?, ?, ?, ?, ?, ?)
                """, arguments: [room.id, room.platformId, room.platformRoomId, room.pushServer, room.platformPushServer, platformBox])
            try db.execute(sql: "INSERT INTO stream_keys (room_id, key_box, key_digest, expires_at_ms, created_at_ms) VALUES (?, ?, ?, ?, ?)",
                           arguments: [room.id, box, digest, room.keyExpiresAtMs, room.createdAtMs])
            try db.execute(sql: "INSERT INTO room_status_history (room_id, status, at_ms, reason) VALUES (?, ?, ?, 'created')",
                           arguments: [room.id, room.status.rawValue, room.createdAtMs])
        }
    }

    public func update(_ room: RoomRecord, previous: RoomRecord, reason: String) async throws {
        let box = room.streamKey != previous.streamKey ? try seal(room.streamKey, room: room.id) : nil
        let platformBox = room.platformStreamKey != previous.platformStreamKey && !room.platformStreamKey.isEmpty
            ? try seal(room.platformStreamKey, room: "\(room.id)#platform") : nil
        let digest = keyDigest(room.streamKey)
        try await write("update room \(room.id)") { db in
            if let platformBox {
                try db.execute(sql: "UPDATE platform_rooms SET platform_key_box = ?, platform_push_server = ? WHERE room_id = ?",
                               arguments: [platformBox, room.platformPushServer, room.id])
            }
            try db.execute(sql: """
                UPDATE rooms SET title = ?, status = ?, play_url = ?, updated_at_ms = ? WHERE id = ?
                """, arguments: [room.title, room.status.rawValue, room.playURL, room.updatedAtMs, room.id])
            try db.execute(sql: "UPDATE platform_rooms SET platform_room_id = ?, push_server = ? WHERE room_id = ?",
                           arguments: [room.platformRoomId, room.pushServer, room.id])
            if let box {
                try db.execute(sql: "UPDATE stream_keys SET revoked_at_ms = ? WHERE room_id = ? AND revoked_at_ms IS NULL",
                               arguments: [room.updatedAtMs, room.id])
                try db.execute(sql: "INSERT INTO stream_keys (room_id, key_box, key_digest, expires_at_ms, created_at_ms) VALUES (?, ?, ?, ?, ?)",
                               arguments: [room.id, box, digest, room.keyExpiresAtMs, room.updatedAtMs])
            } else if room.keyExpiresAtMs != previous.keyExpiresAtMs {
                try db.execute(sql: "UPDATE stream_keys SET expires_at_ms = ? WHERE room_id = ? AND revoked_at_ms IS NULL",
                               arguments: [room.keyExpiresAtMs, room.id])
            }
            if room.status != previous.status {
                try db.execute(sql: "INSERT INTO room_status_history (room_id, status, at_ms, reason) VALUES (?, ?, ?, ?)",
                               arguments: [room.id, room.status.rawValue, room.updatedAtMs, reason])
            }
        }
    }

    public func load(id: String) async throws -> RoomRecord? {
        try await read { db in try self.fetch(db, where: "r.id = ?", [id.databaseValue], limit: 1).first }
    }

    public func find(requestId: String) async throws -> RoomRecord? {
        try await read { db in try self.fetch(db, where: "r.request_id = ?", [requestId.databaseValue], limit: 1).first }
    }

    public func list(_ query: RoomQuery) async throws -> [RoomRecord] {
        var clauses: [String] = []
        var args: [DatabaseValue] = []
        if let s = query.status { clauses.append("r.status = ?"); args.append(s.rawValue.databaseValue) }
        if let p = query.platformId { clauses.append("r.platform_id = ?"); args.append(p.databaseValue) }
        if let k = query.kind { clauses.append("r.kind = ?"); args.append(k.rawValue.databaseValue) }
        if let after = query.after {
            clauses.append("(r.created_at_ms < ? OR (r.created_at_ms = ? AND r.id < ?))")
            args += [after.createdAtMs.databaseValue, after.createdAtMs.databaseValue, after.id.databaseValue]
        }
        let whereSQL = clauses.isEmpty ? "1" : clauses.joined(separator: " AND ")
        let limit = query.limit
        let arguments = args
        return try await read { db in try self.fetch(db, where: whereSQL, arguments, limit: limit) }
    }

    public func roomId(forStreamKey key: String) async throws -> String? {
        let digest = keyDigest(key)
        return try await read { db in
            try String.fetchOne(db, sql: "SELECT room_id FROM stream_keys WHERE key_digest = ? AND revoked_at_ms IS NULL",
                                arguments: [digest])
        }
    }

    public func delete(id: String) async throws {
        try await write("delete room \(id)") { db in try db.execute(sql: "DELETE FROM rooms WHERE id = ?", arguments: [id]) }
    }

    /// The room's status changes, oldest first: (status, at, reason).
    public func statusHistory(roomId: String) async throws -> [(status: RoomStatus, atMs: Int64, reason: String)] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT status, at_ms, reason FROM room_status_history WHERE room_id = ? ORDER BY id", arguments: [roomId])
                .map { (RoomStatus(rawValue: $0["status"]), $0["at_ms"], $0["reason"]) }
        }
    }

    // MARK: helpers

    private func fetch(_ db: Database, where clause: String, _ args: [DatabaseValue], limit: Int) throws -> [RoomRecord] {
        let rows = try Row.fetchAll(db, sql: """
            SELECT r.*, p.platform_room_id, p.push_server, p.platform_push_server, p.platform_key_box, k.key_box, k.expires_at_ms
            FROM rooms r
            JOIN platform_rooms p ON p.room_id = r.id
            JOIN stream_keys k ON k.room_id = r.id AND k.revoked_at_ms IS NULL
            WHERE \(clause)
            ORDER BY r.created_at_ms DESC, r.id DESC
            LIMIT ?
            """, arguments: StatementArguments(args + [limit.databaseValue]))
        return try rows.map { row in
            let id: String = row["id"]
            return RoomRecord(
                id: id, requestId: row["request_id"], title: row["title"], kind: RoomKind(rawValue: row["kind"]),
                platformId: row["platform_id"], playMode: PlayMode(rawValue: row["play_mode"]), ownerId: row["owner_id"],
                pushServer: row["push_server"], streamKey: try open(row["key_box"], room: id), keyExpiresAtMs: row["expires_at_ms"],
                playURL: row["play_url"], platformRoomId: row["platform_room_id"], status: RoomStatus(rawValue: row["status"]),
                createdAtMs: row["created_at_ms"], updatedAtMs: row["updated_at_ms"], ingest: Ingest(rawValue: row["ingest"]),
                platformPushServer: row["platform_push_server"],
                platformStreamKey: try (row["platform_key_box"] as Data?).map { try open($0, room: "\(id)#platform") } ?? "",
                publicPlayback: row["public_playback"])
        }
    }

    /// Every write goes through here, so `isWritable` reflects the last write's outcome.
    @discardableResult
    private func write<T: Sendable>(_ what: String, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            let result = try await pool.write(body)
            writable.withLock { $0 = true }
            return result
        } catch let error as DatabaseError {
            let translated = Self.translate(error, what)
            if translated.code == .unavailable, error.resultCode != .SQLITE_BUSY, error.resultCode != .SQLITE_LOCKED {
                writable.withLock { $0 = false }
            }
            throw translated
        }
    }

    /// False after a write failed for lack of space or a broken disk, until a write succeeds.
    public var isWritable: Bool { writable.withLock { $0 } }

    /// Tries a small write (used by health while the store is unwritable, to notice recovery).
    public func probeWritable() async -> Bool {
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        do {
            // A few pages' worth, removed again so later probes need fresh space too.
            try await write("health probe") { db in
                try db.execute(sql: "INSERT OR REPLACE INTO store_probe (id, at_ms, pad) VALUES (1, ?, zeroblob(8192))", arguments: [now])
            }
            try await write("health probe") { db in try db.execute(sql: "DELETE FROM store_probe") }
        } catch {}
        return isWritable
    }

    /// How many rooms are in each status.
    public func roomCounts() async throws -> [RoomStatus: Int] {
        try await read { db in
            var counts: [RoomStatus: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT status, count(*) AS n FROM rooms GROUP BY status") {
                counts[RoomStatus(rawValue: row["status"])] = row["n"]
            }
            return counts
        }
    }

    private func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await pool.read(body)
        } catch let error as DatabaseError {
            throw Self.translate(error, "read")
        }
    }

    static func translate(_ error: DatabaseError, _ what: String) -> RoomError {
        switch error.resultCode {
        case .SQLITE_FULL:
            return RoomError(.unavailable, "the store cannot be written (\(what)): the disk or database is full; free space, then retry")
        case .SQLITE_READONLY, .SQLITE_CANTOPEN, .SQLITE_IOERR, .SQLITE_PERM:
            return RoomError(.unavailable, "the store cannot be written (\(what)): \(error.message ?? "\(error.resultCode)"); check the data directory")
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            return RoomError(.unavailable, "the store is busy (\(what)); retry")
        case .SQLITE_CONSTRAINT:
            return RoomError(.alreadyExists, "\(what): \(error.message ?? "constraint violated")")
        default:
            return RoomError(.internal, "store error (\(what)): \(error)")
        }
    }

    /// A keyed hash of a stream key: finds its room without storing the key in the clear.
    private func keyDigest(_ key: String) -> Data {
        Data(HMAC<SHA256>.authenticationCode(for: Data(key.utf8), using: masterKey))
    }

    /// Keys stored before v4 get their digest (once; later runs find nothing to do).
    private func backfillKeyDigests() throws {
        try pool.write { db in
            let rows = try Row.fetchAll(db, sql: "SELECT id, room_id, key_box FROM stream_keys WHERE key_digest IS NULL AND revoked_at_ms IS NULL")
            for row in rows {
                let key = try self.open(row["key_box"], room: row["room_id"])
                try db.execute(sql: "UPDATE stream_keys SET key_digest = ? WHERE id = ?", arguments: [self.keyDigest(key), row["id"] as Int64])
            }
        }
    }

    private func seal(_ key: String, room: String) throws -> Data {
        do {
            guard let combined = try AES.GCM.seal(Data(key.utf8), using: masterKey, authenticating: Data(room.utf8)).combined else {
                throw RoomError(.internal, "cannot encrypt the stream key")
            }
            return combined
        } catch let e as RoomError {
            throw e
        } catch {
            throw RoomError(.internal, "cannot encrypt the stream key: \(error)")
        }
    }

    private func open(_ box: Data, room: String) throws -> String {
        do {
            let plain = try AES.GCM.open(AES.GCM.SealedBox(combined: box), using: masterKey, authenticating: Data(room.utf8))
            return String(decoding: plain, as: UTF8.self)
        } catch {
            throw RoomError(.internal, "cannot decrypt the stream key of room \(room): wrong master.key for this database?")
        }
    }

    static func loadOrCreateMasterKey(_ directory: String) throws -> Data {
        try loadOrCreateKey(directory, name: "master.key")
    }

    /// A 32-byte secret kept in `directory/name` (mode 0600), made on first use.
    public static func loadOrCreateKey(_ directory: String, name: String) throws -> Data {
        let path = (directory as NSString).appendingPathComponent(name)
        if let data = FileManager.default.contents(atPath: path) {
            guard data.count == 32 else { throw RoomError(.internal, "\(path) must hold 32 bytes; it holds \(data.count)") }
            return data
        }
        let data = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }
        guard FileManager.default.createFile(atPath: path, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw RoomError(.unavailable, "cannot create \(path)")
        }
        return data
    }
}
