"""Build the real-estate sample: listings / leases / zoning style text and four tasks.

    python data_pipelines/real_estate/build_sample.py        # writes data_pipelines/real_estate/sample/

Tasks (graded so that no tiny model saturates the eval):
  clause_type  (1 a clause with its tell-tale wording, 2 a clause that mentions another clause's
               subject and must be read as a whole) → rent|security_deposit|maintenance|termination|
               renewal|assignment|insurance|use
  extract      (2) one figure from a listing with several → number
  zoning       (3) is the proposed height within the zone's limit → compliant|non-compliant
  annual_rent  (3) monthly rent × 12 → number

The raw corpus gets planted noise: see verticalft.sample_data.plant_noise.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from verticalft.sample_data import TaskItem, build_and_report, pick_doc, worksheet_doc

SEED = 4321
OUT = Path(__file__).resolve().parent / "sample"

STREETS = [
    "Maple Ave",
    "Oak St",
    "Harbor Blvd",
    "Pine Rd",
    "Elm Ct",
    "Cedar Ln",
    "Lakeview Dr",
    "Main St",
    "Sunset Blvd",
    "River Rd",
    "Hillcrest Way",
    "Park Pl",
]
CITIES = ["Austin", "Denver", "Portland", "Raleigh", "Tampa", "Columbus", "Phoenix", "Madison"]
USES = ["general office", "retail sales", "medical office", "light manufacturing", "restaurant", "warehouse"]
CLAUSES = {
    "rent": [
        "Tenant shall pay base rent of ${x} per month, due on the first day of each month.",
        "Monthly rent of ${x} is payable in advance without deduction or offset.",
        "The base rent for the premises is ${x} per month, payable on the first business day.",
    ],
    "security_deposit": [
        "Upon signing, Tenant shall deposit ${x} as a security deposit.",
        "A security deposit of ${x} shall be held by Landlord and returned within 30 days of move-out.",
        "Landlord acknowledges receipt of a ${x} security deposit.",
    ],
    "maintenance": [
        "Landlord shall keep the roof, structure and HVAC system in good repair.",
        "Tenant is responsible for routine maintenance and minor repairs of the premises.",
        "All repairs to plumbing and electrical systems shall be made by Landlord.",
    ],
    "termination": [
        "Either party may terminate this lease upon {n} days written notice.",
        "This lease shall terminate automatically if the premises are destroyed by fire.",
        "Landlord may end this lease early upon a material default by Tenant.",
    ],
    "renewal": [
        "Tenant has the option to renew this lease for {n} additional years.",
        "This lease may be extended for a further term of {n} years at market rent.",
        "Tenant may exercise its renewal option by notice given {n} months before expiry.",
    ],
    "assignment": [
        "Tenant shall not assign this lease or sublet the premises without Landlord's consent.",
        "Any sublease or transfer of this lease requires the prior written approval of Landlord.",
        "Tenant may assign this lease to an affiliate without consent.",
    ],
    "insurance": [
        "Tenant shall carry general liability insurance of at least ${x}.",
        "Landlord shall insure the building against fire and casualty at full replacement cost.",
        "Tenant shall name Landlord as additional insured on its liability policy.",
    ],
    "use": [
        "The premises shall be used solely for {use} purposes.",
        "Tenant may use the premises only for {use} and related lawful activities.",
        "No use other than {use} is permitted without Landlord's consent.",
    ],
}
# Harder clauses: they mention another clause's subject; the label is what the clause *does*.
CONTEXT_CLAUSES = {
    "termination": "If Tenant fails to pay rent for {n} days after notice, Landlord may terminate this lease.",
    "security_deposit": "Landlord may apply the security deposit to unpaid rent, and Tenant shall restore it.",
    "maintenance": "Tenant shall repair any damage to the premises at its own cost, and insurance proceeds "
    "shall be used for such repairs.",
    "renewal": "If Tenant renews, the rent for the renewal term shall be {n} percent above the current rent.",
    "assignment": "Upon any permitted sublease, Tenant remains liable for rent and all other obligations.",
    "insurance": "Tenant's insurance shall cover the full value of its fixtures, and Landlord shall not be "
    "liable for any loss covered by such insurance.",
    "use": "Tenant shall not use the premises for any purpose that would increase Landlord's insurance premium.",
    "rent": "Rent shall increase by {n} percent on each anniversary, and late rent bears a fee of 5 percent.",
}
CLAUSE_TYPES = sorted(CLAUSES)
# Unsupported additions for the DPO set's rejected answers (clauses and figures not in the prompt).
HALLUCINATIONS = (
    "and the tenant may sublet freely",
    "plus a rent-free period of 12 months",
    "as approved by the city council in 1998",
    "with an option to buy at 50% of market value",
    "subject to a 30% vacancy penalty",
    "and the landlord waives all repairs",
)
LISTING_FIELDS = ["monthly rent", "HOA fee", "square footage", "year built"]


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        x=f"{rng.randint(5, 95) * 100:,}", n=rng.choice([2, 3, 5, 10, 30, 60, 90]), use=rng.choice(USES)
    )


def _listing_values(rng: random.Random) -> dict[str, int]:
    return {
        "monthly rent": rng.randint(9, 60) * 50,
        "HOA fee": rng.randint(5, 60) * 10,
        "square footage": rng.randint(45, 400) * 10,
        "year built": rng.randint(1950, 2023),
    }


def _listing_text(rng: random.Random, v: dict[str, int]) -> str:
    beds = rng.randint(1, 5)
    return (
        f"{rng.randint(10, 9999)} {rng.choice(STREETS)}, {rng.choice(CITIES)}: {beds} bed "
        f"{rng.randint(1, beds)} bath, {v['square footage']} sq ft, built {v['year built']}. "
        f"Rent ${v['monthly rent']}/month, HOA ${v['HOA fee']}/month."
    )


# --------------------------------------------------------------------------- raw documents
def _doc_listing(rng: random.Random) -> str:
    v = _listing_values(rng)
    return (
        _listing_text(rng, v)
        + f" Annual rent is ${v['monthly rent'] * 12}. Close to schools, parks and transit; "
        "pets considered; parking included. Contact the leasing office to schedule a showing."
    )


def _doc_lease(rng: random.Random) -> str:
    types = rng.sample(CLAUSE_TYPES, 4)
    parts = [
        f"{i + 1}. {t.replace('_', ' ').title()}. {_fill(rng.choice(CLAUSES[t]), rng)}"
        for i, t in enumerate(types)
    ]
    return "COMMERCIAL LEASE AGREEMENT (excerpt)\n" + "\n".join(parts)


def _doc_zoning(rng: random.Random) -> str:
    zone = rng.choice(["R-1", "R-2", "R-3", "C-1", "C-2", "M-1"])
    limit = rng.choice([30, 35, 40, 45, 60, 85])
    return (
        f"Zoning code section {rng.randint(10, 99)}.{rng.randint(1, 20)}: In the {zone} district the maximum "
        f"building height is {limit} feet, the minimum front setback is {rng.choice([10, 15, 20, 25])} feet, "
        f"and lot coverage may not exceed {rng.choice([35, 40, 50, 60])} percent. A building of {limit + 5} feet "
        f"is non-compliant; a building of {limit - 5} feet is compliant."
    )


def _doc_market(rng: random.Random) -> str:
    city = rng.choice(CITIES)
    a, b = rng.randint(900, 3500), rng.randint(900, 3500)
    return (
        f"{city} market report: the median asking rent was ${a} per month this quarter, compared with ${b} a "
        f"year ago. Vacancy stood at {rng.uniform(2, 12):.1f} percent and {rng.randint(50, 900)} new units were "
        f"delivered. Cap rates were roughly {rng.uniform(4, 8):.1f} percent for stabilised assets."
    )


def make_doc(rng: random.Random) -> dict:
    return pick_doc(
        rng,
        {
            "listing": (_doc_listing, 2),
            "lease": (_doc_lease, 3),
            "zoning": (_doc_zoning, 1),
            "market": (_doc_market, 1),
            "worksheet": (_doc_worksheet, 5),
        },
    )


# --------------------------------------------------------------------------- tasks
def _task_clause(rng: random.Random) -> TaskItem:
    label = rng.choice(CLAUSE_TYPES)
    hard = rng.random() < 0.35
    clause = _fill(CONTEXT_CLAUSES[label] if hard else rng.choice(CLAUSES[label]), rng)
    wrong = rng.choice([t for t in CLAUSE_TYPES if t != label])
    prompt = f"Lease clause: {clause}\nClause type:"
    return TaskItem("clause_type", prompt, label, "label", 2 if hard else 1, wrong)


def _task_extract(rng: random.Random) -> TaskItem:
    v = _listing_values(rng)
    field = rng.choice(LISTING_FIELDS)
    wrong = str(v[rng.choice([f for f in LISTING_FIELDS if f != field])])
    prompt = f"What is the {field}? Listing: {_listing_text(rng, v)}\nAnswer:"
    return TaskItem("extract", prompt, str(v[field]), "number", 2, wrong)


def _task_zoning(rng: random.Random) -> TaskItem:
    limit = rng.choice([30, 35, 40, 45, 60, 85])
    height = limit + rng.choice([-15, -10, -5, -2, 2, 5, 10, 15])
    answer = "compliant" if height <= limit else "non-compliant"
    wrong = "non-compliant" if answer == "compliant" else "compliant"
    prompt = (
        f"The zone allows a maximum height of {limit} feet. The proposed building is {height} feet. "
        f"Is it compliant?\nAnswer:"
    )
    return TaskItem("zoning", prompt, answer, "label", 3, wrong)


def _task_annual(rng: random.Random) -> TaskItem:
    monthly = rng.randint(9, 60) * 50
    wrong = str(monthly * rng.choice([10, 11, 13]))
    prompt = f"The monthly rent is ${monthly}. What is the annual rent in dollars?\nAnswer:"
    return TaskItem("annual_rent", prompt, str(monthly * 12), "number", 3, wrong)


def make_task(rng: random.Random) -> TaskItem:
    fn = rng.choices([_task_clause, _task_extract, _task_zoning, _task_annual], weights=[4, 3, 2, 2])[0]
    return fn(rng)


def _doc_worksheet(rng: random.Random) -> str:
    return worksheet_doc(rng, make_task)


def main(out: Path = OUT) -> None:
    build_and_report(out, "re", make_doc, make_task, seed=SEED, n_docs=1000, hallucinations=HALLUCINATIONS)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
