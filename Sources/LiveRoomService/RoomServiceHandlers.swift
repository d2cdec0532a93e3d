import Foundation
import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRPC

extension RPCStatus {
    /// The status a domain failure is reported with.
    init(_ error: RoomError) {
        let code: RPCStatus.Code
        switch error.code {
        case .invalidArgument: code = .invalidArgument
        case .notFound: code = .notFound
        case .alreadyExists: code = .alreadyExists
        case .permissionDenied: code = .permissionDenied
        case .failedPrecondition: code = .failedPrecondition
        case .unavailable: code = .unavailable
        case .deadlineExceeded: code = .deadlineExceeded
        case .aborted: code = .aborted
        case .resourceExhausted: code = .resourceExhausted
        case .internal: code = .internal
        }
        self.init(code, error.message)
    }
}

/// Runs a handler body, reporting domain failures with their status.
func domain<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as RoomError {
        throw RPCStatus(error)
    }
}

/// `liveroom.v1.RoomService`.
public enum RoomServiceHandlers {
    static let defaultPageSize = 50
    static let maxPageSize = 1000

    static func register(_ registry: RoomRegistry, relay: RelayManager, mirror: MirrorSupervisor, in services: inout ServiceRegistry) {
        services.unary(RoomService.createRoom) { request, context in
            try await domain {
                let targets = try await simulcastPlatforms(request, registry)
                let (room, created) = try await registry.create(request)
                if created {
                    context.logger.info("room created", metadata: ["room": "\(room.id)", "platform": "\(room.platformId)"])
                }
                var r = CreateRoomResponse()
                r.room = room.message(nowMs: registry.now)
                r.created = created
                if !targets.isEmpty {
                    r.linkedRooms = try await simulcast(room, to: targets, registry, relay).map { $0.message(nowMs: registry.now) }
                }
                return r
            }
        }
        services.unary(RoomService.getRoom) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain {
                var r = GetRoomResponse()
                var room = try await registry.room(request.roomId).snapshot().message(nowMs: registry.now)
                room.destinations = try await relay.list(roomId: request.roomId)
                r.room = room
                return r
            }
        }
        services.unary(RoomService.addDestination) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain {
                let d = try await relay.add(request)
                context.logger.info("destination added", metadata: ["destination": "\(d.destinationId)", "url": "\(d.url)"])
                var r = AddDestinationResponse()
                r.destination = d
                return r
            }
        }
        services.unary(RoomService.removeDestination) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain {
                try await relay.remove(roomId: request.roomId, destinationId: request.destinationId)
                return RemoveDestinationResponse()
            }
        }
        services.unary(RoomService.listDestinations) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain {
                var r = ListDestinationsResponse()
                r.destinations = try await relay.list(roomId: request.roomId)
                return r
            }
        }
        services.unary(RoomService.listRooms) { request, _ in
            try await domain {
                guard request.pageSize >= 0 else { throw RoomError(.invalidArgument, "page_size must not be negative") }
                let size = request.pageSize == 0 ? defaultPageSize : min(Int(request.pageSize), maxPageSize)
                var query = RoomQuery(limit: size + 1)
                if request.status != .unspecified { query.status = request.status }
                if !request.platformId.isEmpty { query.platformId = request.platformId }
                if request.kind != .unspecified { query.kind = request.kind }
                if !request.pageToken.isEmpty { query.after = try PageToken.decode(request.pageToken) }
                let rooms = try await registry.list(query)
                var r = ListRoomsResponse()
                let now = registry.now
                r.rooms = rooms.prefix(size).map { $0.message(nowMs: now) }
                if rooms.count > size, let last = rooms.prefix(size).last {
                    r.nextPageToken = PageToken.encode(createdAtMs: last.createdAtMs, id: last.id)
                }
                return r
            }
        }
        services.unary(RoomService.refreshRoom) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain {
                var r = RefreshRoomResponse()
                let room = try await registry.room(request.roomId)
                let record = try await room.refresh()
                await mirror.roomRefreshed(room, record)
                r.room = record.message(nowMs: registry.now)
                return r
            }
        }
        services.unary(RoomService.rotateKey) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain {
                let room = try await registry.room(request.roomId).rotateKey()
                context.logger.info("stream key rotated", metadata: ["room": "\(room.id)"])
                var r = RotateKeyResponse()
                r.room = room.message(nowMs: registry.now)
                return r
            }
        }
        services.unary(RoomService.closeRoom) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain {
                let room = try await registry.room(request.roomId).close()
                context.logger.info("room closed", metadata: ["room": "\(room.id)"])
                var r = CloseRoomResponse()
                r.room = room.message(nowMs: registry.now)
                return r
            }
        }
        services.unary(RoomService.listPlatforms) { _, _ in
            let platforms = await registry.platformList
            var connectors: [String: PlatformClient] = [:]
            for p in platforms { connectors[p.id] = await registry.connector(for: p.id) }
            let probes = connectors
            let reasons = await withTaskGroup(of: (String, String?).self) { group in
                for (id, c) in probes { group.addTask { (id, await c.probe()) } }
                var out: [String: String?] = [:]
                for await (id, reason) in group { out[id] = reason }
                return out
            }
            var r = ListPlatformsResponse()
            r.platforms = platforms.map { p in
                var m = Platform()
                m.platformId = p.id
                m.displayName = p.displayName
                m.builtin = p.isBuiltin
                m.supportsLive = p.supportsLive
                m.supportsMeeting = p.supportsMeeting
                m.connectorAddress = p.connector
                m.keyTtlMs = p.keyTTLMs
                if p.isBuiltin {
                    m.reachable = true
                } else if let reason = reasons[p.id] {
                    m.reachable = reason == nil
                    m.unreachableReason = reason ?? ""
                }
                return m
            }
            return r
        }
    }
}

extension RoomServiceHandlers {
    static let maxSimulcast = 16

    /// The simulcast platforms asked for, checked before anything is created.
    static func simulcastPlatforms(_ request: CreateRoomRequest, _ registry: RoomRegistry) async throws -> [String] {
        let ids = request.simulcastPlatformIds
        guard ids.count <= maxSimulcast else {
            throw RoomError(.invalidArgument, "simulcast_platform_ids has \(ids.count) platforms; at most \(maxSimulcast)")
        }
        var seen: Set<String> = []
        for id in ids {
            guard id != request.platformId else {
                throw RoomError(.invalidArgument, "simulcast_platform_ids: \(id) is the room's own platform")
            }
            guard let p = await registry.platform(id), !p.isBuiltin else {
                throw RoomError(.invalidArgument, "simulcast_platform_ids: \"\(id)\" is not an external platform of this daemon")
            }
            guard p.supports(request.kind) else {
                throw RoomError(.invalidArgument, "simulcast_platform_ids: platform \(id) does not support this kind of room")
            }
            guard seen.insert(id).inserted else { throw RoomError(.invalidArgument, "simulcast_platform_ids: \(id) is named twice") }
        }
        return ids
    }

    /// Creates (or finds, on a retried request) the linked rooms and links them to `source`.
    static func simulcast(_ source: RoomRecord, to platforms: [String], _ registry: RoomRegistry, _ relay: RelayManager) async throws -> [RoomRecord] {
        var linked: [RoomRecord] = []
        for p in platforms {
            var ask = CreateRoomRequest()
            ask.title = source.title
            ask.kind = source.kind
            ask.platformId = p
            ask.playMode = .external
            ask.ownerId = source.ownerId
            ask.requestId = "\(source.requestId)/\(p)"
            ask.ingest = .relay
            do {
                linked.append(try await registry.create(ask).room)
            } catch let e as RoomError {
                throw RoomError(e.code, "room \(source.id) was created, but its simulcast room on \(p) was not: \(e.message); retry with the same request_id to finish")
            }
        }
        try await relay.link(source: try await registry.room(source.id), targets: linked)
        return linked
    }
}

/// Opaque page tokens: the last room of a page, base64url.
enum PageToken {
    static func encode(createdAtMs: Int64, id: String) -> String {
        Data("\(createdAtMs):\(id)".utf8).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    static func decode(_ token: String) throws -> (createdAtMs: Int64, id: String) {
        var b64 = token.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while b64.count % 4 != 0 { b64 += "=" }
        guard let data = Data(base64Encoded: b64), let text = String(data: data, encoding: .utf8),
            let colon = text.firstIndex(of: ":"), let at = Int64(text[..<colon])
        else { throw RoomError(.invalidArgument, "page_token is not one this server gave out") }
        return (at, String(text[text.index(after: colon)...]))
    }
}
