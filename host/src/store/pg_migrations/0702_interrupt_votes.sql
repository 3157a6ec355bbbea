-- Quorum approvals (openwop-interrupt-quorum): one row per voter and interrupt. The primary key
-- makes a second vote by the same voter impossible whatever the code does; `seq` orders the
-- votes as they were counted.
CREATE TABLE interrupt_votes (
    interrupt_id  TEXT COLLATE "C" NOT NULL REFERENCES interrupts(interrupt_id),
    voter         TEXT COLLATE "C" NOT NULL,
    seq           BIGINT NOT NULL,
    action        TEXT COLLATE "C" NOT NULL,   -- accept | reject
    decided_at    TEXT COLLATE "C" NOT NULL,
    submitted_by  TEXT COLLATE "C" NOT NULL,   -- the key that cast it (an on-behalf vote names another voter)
    detail        TEXT COLLATE "C" NOT NULL,   -- JSON: feedback?, eligibleBy
    event_id      TEXT COLLATE "C" NOT NULL,   -- the vote's approval.received
    PRIMARY KEY (interrupt_id, voter),
    UNIQUE (interrupt_id, seq)
);
