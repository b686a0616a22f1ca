"""Write the embedded default data in data/samples/ from the passages authored below.

Three sub-datasets on distinct topics, 16 queries each. Every query has one positive and 9-10 hard
negatives taken from the same topic; some negatives are planted false negatives (a second passage that
answers the query in other words) and some are ambiguous (about the same entity, answering part of the
question). Their true labels go to labels.jsonl, never into the training files. A small BEIR-layout eval
set over the same corpus asks held-out questions.

    python scripts/make_sample_data.py      # rewrites data/samples/ deterministically
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from arhn_pipeline.identity import passage_key

OUT = Path(__file__).resolve().parent.parent / "data" / "samples"

# Each entity: a training query and its positive; optionally `fn` (another passage answering the query:
# a planted false negative), `amb` (same entity, answers part of the query: ambiguous), `rel` (same entity,
# does not answer), and `eval` (a held-out question answered by the passage it names).
TOPICS: dict[str, dict] = {
    "sample_geo": {
        "prompt": "Represent this question for retrieving passages that answer it: ",
        "entities": [
            dict(
                key="nile",
                query="how long is the nile river",
                pos="The Nile is a major north-flowing river in northeastern Africa. At about 6,650 kilometres "
                "(4,130 miles) it has long been considered the longest river in the world, draining into the "
                "Mediterranean Sea through a wide delta in Egypt.",
                fn="Measured from its most distant source in the Burundi highlands to the Mediterranean, the Nile "
                "runs for roughly 6,650 km, a length that surveys of the White Nile headwaters keep revising by "
                "only a few dozen kilometres.",
                rel="The Aswan High Dam, completed in 1970, holds back the Nile to form Lake Nasser. It ended the "
                "annual flood that had deposited silt on Egyptian farmland for thousands of years.",
                eval=("which dam created lake nasser", "rel"),
            ),
            dict(
                key="amazon",
                query="which ocean does the amazon river flow into",
                pos="The Amazon River rises in the Andes of Peru and flows east across Brazil before emptying "
                "into the Atlantic Ocean. Its mouth is so wide that fresh water can be found far out at sea.",
                rel="The Amazon basin covers about seven million square kilometres and holds the largest "
                "tropical rainforest on Earth, home to roughly one in ten known species.",
                eval=("how large is the amazon basin", "rel"),
            ),
            dict(
                key="everest",
                query="how tall is mount everest",
                pos="Mount Everest, on the border between Nepal and the Tibet Autonomous Region of China, is "
                "Earth's highest mountain above sea level. A 2020 joint survey set its height at 8,848.86 metres.",
                fn="Chinese and Nepali surveyors announced in December 2020 that the summit of Chomolungma, known "
                "in English as Everest, stands 8,848.86 m above sea level, slightly higher than the 1955 figure.",
                rel="Tenzing Norgay and Edmund Hillary made the first confirmed ascent of Everest on 29 May 1953, "
                "climbing the south-east ridge from Nepal.",
                eval=("who first climbed everest", "rel"),
            ),
            dict(
                key="k2",
                query="where is k2 located",
                pos="K2, the second-highest mountain on Earth at 8,611 metres, lies in the Karakoram range on the "
                "border between Gilgit-Baltistan in Pakistan and Xinjiang in China.",
                amb="K2 is famous among mountaineers as the 'Savage Mountain' because of its steep faces and "
                "sudden storms; climbers approach it from the Baltoro Glacier.",
            ),
            dict(
                key="sahara",
                query="how big is the sahara desert",
                pos="The Sahara is the largest hot desert in the world, covering about 9.2 million square "
                "kilometres of North Africa, an area comparable to that of China or the United States.",
                amb="Only about a quarter of the Sahara is sand dunes; most of it is stony plateau, gravel plain "
                "and mountains, stretching from the Atlantic coast to the Red Sea.",
                rel="The Sahara was green and dotted with lakes during the African Humid Period, which ended "
                "roughly 5,000 years ago as monsoon rains moved south.",
            ),
            dict(
                key="baikal",
                query="what is the deepest lake in the world",
                pos="Lake Baikal in southern Siberia is the deepest lake in the world, reaching 1,642 metres, and "
                "it holds about a fifth of the planet's unfrozen fresh surface water.",
                fn="No lake on Earth is deeper than Baikal: soundings in its central basin have found a maximum "
                "depth of 1,642 m, far beyond Tanganyika's 1,470 m.",
                rel="The Baikal seal, or nerpa, is one of the few freshwater seals in the world and is found "
                "only in Lake Baikal.",
                eval=("which seal lives only in lake baikal", "rel"),
            ),
            dict(
                key="danube",
                query="which countries does the danube flow through",
                pos="The Danube flows through or along the borders of ten countries: Germany, Austria, Slovakia, "
                "Hungary, Croatia, Serbia, Romania, Bulgaria, Moldova and Ukraine, before reaching the Black Sea.",
                amb="Four capital cities lie on the Danube: Vienna, Bratislava, Budapest and Belgrade, more than "
                "on any other river in the world.",
            ),
            dict(
                key="atacama",
                query="what is the driest desert in the world",
                pos="The Atacama Desert in northern Chile is the driest non-polar desert on Earth; some weather "
                "stations there have never recorded rain.",
                fn="Parts of Chile's Atacama receive less than one millimetre of rain a year, which makes it the "
                "driest place outside the polar dry valleys of Antarctica.",
                rel="Astronomers built the ALMA radio telescope array on the Chajnantor plateau in the Atacama, "
                "at 5,000 metres, where the thin dry air suits observation.",
                eval=("where is the alma telescope", "rel"),
            ),
            dict(
                key="greenland",
                query="what is the largest island in the world",
                pos="Greenland, an autonomous territory of the Kingdom of Denmark, is the world's largest island "
                "at about 2.17 million square kilometres; Australia is counted as a continent.",
                rel="About 80 percent of Greenland is covered by an ice sheet up to three kilometres thick, the "
                "second largest body of ice after Antarctica's.",
            ),
            dict(
                key="mariana",
                query="how deep is the mariana trench",
                pos="The Mariana Trench in the western Pacific is the deepest known part of the oceans. Its "
                "Challenger Deep reaches about 10,935 metres below sea level.",
                amb="In 1960 Jacques Piccard and Don Walsh descended into the Challenger Deep in the bathyscaphe "
                "Trieste, the first crewed dive to the bottom of the Mariana Trench.",
            ),
            dict(
                key="mississippi",
                query="where does the mississippi river start",
                pos="The Mississippi River begins at Lake Itasca in northern Minnesota, where visitors can wade "
                "across the narrow stream at its source, and ends 3,730 km later in the Gulf of Mexico.",
                rel="The Mississippi delta in Louisiana loses land each year because levees stop the floods that "
                "once spread new sediment over the marshes.",
            ),
            dict(
                key="kilimanjaro",
                query="which country is mount kilimanjaro in",
                pos="Mount Kilimanjaro, a dormant volcano with three cones, stands in northeastern Tanzania near "
                "the Kenyan border and rises to 5,895 metres at Uhuru Peak.",
                fn="Tanzania's Kilimanjaro National Park protects the mountain, and most climbers start from the "
                "Tanzanian town of Moshi on routes such as Marangu and Machame.",
                rel="The glaciers on Kilimanjaro's summit have shrunk by more than 80 percent since the early "
                "twentieth century.",
            ),
            dict(
                key="caspian",
                query="what is the largest lake by area",
                pos="The Caspian Sea, between Europe and Asia, is the largest enclosed inland body of water on "
                "Earth by area, at about 371,000 square kilometres, and is usually counted as a lake.",
                amb="Lake Superior is the largest freshwater lake in the world by surface area, covering 82,100 "
                "square kilometres on the border of Canada and the United States.",
            ),
            dict(
                key="andes",
                query="what is the longest mountain range",
                pos="The Andes are the longest continental mountain range in the world, running about 7,000 "
                "kilometres along the western edge of South America from Venezuela to Patagonia.",
                rel="Aconcagua, in Argentina's Mendoza province, is the highest peak of the Andes at 6,961 metres "
                "and the highest mountain outside Asia.",
                eval=("what is the highest mountain outside asia", "rel"),
            ),
            dict(
                key="victoria_falls",
                query="where are victoria falls",
                pos="Victoria Falls lies on the Zambezi River at the border between Zambia and Zimbabwe, where "
                "the river drops 108 metres into a narrow gorge.",
                rel="Local people call the falls Mosi-oa-Tunya, 'the smoke that thunders', after the spray that "
                "can be seen from fifty kilometres away.",
            ),
            dict(
                key="dead_sea",
                query="what is the lowest point on land",
                pos="The shore of the Dead Sea, between Jordan and Israel, is the lowest land on Earth at about "
                "430 metres below sea level, and the level keeps falling by about a metre a year.",
                amb="The Dead Sea is almost ten times saltier than the ocean, so swimmers float easily and no "
                "fish can live in it.",
            ),
        ],
    },
    "sample_bio": {
        "prompt": "Represent this question for retrieving supporting biomedical passages: ",
        "entities": [
            dict(
                key="vitamin_c",
                query="what disease is caused by vitamin c deficiency",
                pos="Scurvy results from a lack of vitamin C (ascorbic acid), which the body needs to make "
                "collagen; symptoms include bleeding gums, poor wound healing and tiredness.",
                fn="Sailors on long voyages once suffered bleeding gums and reopened wounds until James Lind "
                "showed that citrus fruit prevents the condition, now known to be a deficiency of ascorbic acid "
                "called scurvy.",
                rel="Good dietary sources of vitamin C include peppers, kiwifruit, broccoli and oranges; cooking "
                "destroys part of it because it is heat-sensitive.",
                eval=("which foods are rich in vitamin c", "rel"),
            ),
            dict(
                key="insulin",
                query="which organ produces insulin",
                pos="Insulin is made by the beta cells of the pancreatic islets of Langerhans and released into "
                "the blood when glucose levels rise after a meal.",
                fn="In type 1 diabetes the immune system destroys the insulin-producing beta cells of the "
                "pancreas, so patients must inject the hormone.",
                rel="Insulin lets muscle and fat cells take up glucose by moving GLUT4 transporters to the cell "
                "surface.",
            ),
            dict(
                key="penicillin",
                query="who discovered penicillin",
                pos="Alexander Fleming discovered penicillin in 1928 at St Mary's Hospital in London, after "
                "noticing that a Penicillium mould had killed the staphylococci on a culture plate.",
                amb="Howard Florey and Ernst Chain purified penicillin and showed in 1940 that it cured "
                "infections in mice, turning the mould extract into a usable drug.",
                rel="Penicillin works by blocking the enzymes that cross-link the peptidoglycan of the bacterial "
                "cell wall, so dividing bacteria burst.",
                eval=("how does penicillin kill bacteria", "rel"),
            ),
            dict(
                key="malaria",
                query="how is malaria transmitted",
                pos="Malaria is spread by the bite of infected female Anopheles mosquitoes, which carry "
                "Plasmodium parasites from one person to the next.",
                fn="When an infected Anopheles mosquito takes a blood meal it injects Plasmodium sporozoites, "
                "which travel to the liver; this bite is how nearly all malaria infections begin.",
                rel="Artemisinin-based combination therapies are the recommended first-line treatment for "
                "uncomplicated falciparum malaria.",
                eval=("what is the first line treatment for falciparum malaria", "rel"),
            ),
            dict(
                key="hemoglobin",
                query="what does hemoglobin do",
                pos="Hemoglobin, the iron-containing protein in red blood cells, binds oxygen in the lungs and "
                "carries it to the tissues, returning part of the carbon dioxide.",
                rel="Sickle cell disease is caused by a single amino acid change in the beta chain of "
                "hemoglobin, which makes red cells stiff and curved.",
                eval=("what causes sickle cell disease", "rel"),
            ),
            dict(
                key="dna_structure",
                query="who discovered the double helix structure of dna",
                pos="James Watson and Francis Crick proposed the double helix model of DNA in 1953, relying on "
                "X-ray diffraction images made by Rosalind Franklin and Maurice Wilkins.",
                amb="Rosalind Franklin's Photograph 51, taken in 1952, showed the X-shaped diffraction pattern "
                "that pointed to a helical DNA molecule.",
            ),
            dict(
                key="tuberculosis",
                query="what bacterium causes tuberculosis",
                pos="Tuberculosis is caused by Mycobacterium tuberculosis, a slow-growing bacterium that Robert "
                "Koch identified in 1882 and that usually infects the lungs.",
                fn="Robert Koch's 1882 lecture showed that a rod-shaped bacillus, Mycobacterium tuberculosis, was "
                "the cause of consumption, the disease now called TB.",
                rel="The BCG vaccine protects young children against severe forms of tuberculosis but gives "
                "variable protection against lung disease in adults.",
            ),
            dict(
                key="thyroid",
                query="what hormones does the thyroid gland produce",
                pos="The thyroid gland produces thyroxine (T4) and triiodothyronine (T3), iodine-containing "
                "hormones that regulate metabolic rate, as well as calcitonin.",
                rel="Iodine deficiency can cause goitre, a visible swelling of the thyroid gland in the neck.",
                eval=("what causes a goitre", "rel"),
            ),
            dict(
                key="measles",
                query="how effective is the measles vaccine",
                pos="Two doses of the measles, mumps and rubella (MMR) vaccine are about 97 percent effective at "
                "preventing measles; one dose is about 93 percent effective.",
                amb="Measles vaccination is usually given at 12 to 15 months of age, with a second dose at four "
                "to six years.",
            ),
            dict(
                key="statins",
                query="how do statins lower cholesterol",
                pos="Statins inhibit HMG-CoA reductase, the rate-limiting enzyme of cholesterol synthesis in the "
                "liver, which raises LDL receptor numbers and lowers blood LDL cholesterol.",
                fn="By blocking the liver enzyme HMG-CoA reductase, drugs such as atorvastatin cut the body's own "
                "cholesterol production, so liver cells pull more LDL out of the blood.",
                rel="Muscle pain is the most commonly reported side effect of statin therapy, although blinded "
                "trials find it only slightly more often than with placebo.",
            ),
            dict(
                key="neurons",
                query="what is the function of myelin",
                pos="Myelin is a fatty sheath wrapped around axons that insulates them and lets electrical "
                "impulses jump between nodes of Ranvier, greatly speeding nerve conduction.",
                rel="Multiple sclerosis is an autoimmune disease in which the immune system attacks myelin in "
                "the brain and spinal cord.",
                eval=("what happens in multiple sclerosis", "rel"),
            ),
            dict(
                key="gut_microbiome",
                query="how many bacteria live in the human gut",
                pos="The human colon hosts roughly 38 trillion bacterial cells, about as many as the body's own "
                "cells, according to a 2016 revised estimate.",
                amb="The gut microbiome contains hundreds of bacterial species, dominated by the phyla Bacillota "
                "and Bacteroidota.",
            ),
            dict(
                key="aspirin",
                query="how does aspirin reduce pain",
                pos="Aspirin irreversibly inhibits the cyclooxygenase enzymes COX-1 and COX-2, reducing the "
                "production of prostaglandins that cause pain, fever and inflammation.",
                rel="Low-dose aspirin is used to prevent heart attacks in some patients because it stops "
                "platelets from clumping together.",
            ),
            dict(
                key="cholera",
                query="how is cholera spread",
                pos="Cholera spreads through water or food contaminated with the faeces of an infected person; "
                "Vibrio cholerae then produces a toxin that causes severe watery diarrhoea.",
                fn="John Snow traced the 1854 Broad Street cholera outbreak to one contaminated water pump, "
                "showing that the disease travels in sewage-tainted drinking water.",
                rel="Oral rehydration solution, a mix of water, salt and sugar, treats most cholera cases by "
                "replacing lost fluid.",
            ),
            dict(
                key="calcium",
                query="which vitamin helps the body absorb calcium",
                pos="Vitamin D increases the absorption of calcium from the intestine; without enough of it, "
                "children develop rickets and adults osteomalacia.",
                rel="Dairy products, canned fish with bones and fortified plant milks are rich dietary sources "
                "of calcium.",
            ),
            dict(
                key="telomeres",
                query="what are telomeres",
                pos="Telomeres are repetitive DNA sequences (TTAGGG in humans) that cap the ends of chromosomes "
                "and shorten with each cell division.",
                amb="The enzyme telomerase adds DNA repeats to chromosome ends and is active in stem cells and "
                "most cancer cells.",
            ),
        ],
    },
    "sample_fin": {
        "prompt": "Represent this financial question for retrieving passages that answer it: ",
        "entities": [
            dict(
                key="roth_ira",
                query="what is the difference between a roth ira and a traditional ira",
                pos="Contributions to a traditional IRA may be tax-deductible and withdrawals are taxed as "
                "income, while Roth IRA contributions are made with after-tax money and qualified withdrawals are "
                "tax-free.",
                fn="With a Roth you pay the tax now and take the money out tax-free in retirement; with a "
                "traditional IRA you get the deduction now and pay income tax when you withdraw.",
                rel="The IRS sets a yearly cap on how much a person can put into all of their IRAs combined, "
                "with a higher catch-up limit from age 50.",
            ),
            dict(
                key="index_fund",
                query="what is an index fund",
                pos="An index fund is a mutual fund or ETF that holds the securities of a market index, such as "
                "the S&P 500, in order to match the index's return rather than beat it.",
                fn="Instead of paying a manager to pick stocks, a passive fund simply buys every company in a "
                "benchmark like the S&P 500 so that its return tracks that benchmark.",
                rel="John Bogle launched the first index mutual fund for retail investors at Vanguard in 1976.",
                eval=("who started the first retail index fund", "rel"),
            ),
            dict(
                key="compound_interest",
                query="how does compound interest work",
                pos="Compound interest is interest earned on both the original principal and on the interest "
                "already added, so a balance grows faster over time than with simple interest.",
                amb="The rule of 72 estimates how many years it takes to double money: divide 72 by the annual "
                "interest rate in percent.",
                eval=("how long does it take to double money", "amb"),
            ),
            dict(
                key="credit_score",
                query="what affects my credit score",
                pos="FICO scores weigh payment history most heavily (about 35%), followed by amounts owed (30%), "
                "length of credit history (15%), new credit (10%) and credit mix (10%).",
                fn="Paying every bill on time matters most for your score, then keeping balances low relative "
                "to your limits; how old your accounts are, recent applications and the mix of loans count less.",
                rel="In the United States you can get a free copy of your credit report from each of the three "
                "bureaus, Equifax, Experian and TransUnion.",
            ),
            dict(
                key="inflation",
                query="what causes inflation",
                pos="Inflation arises when demand outpaces the economy's capacity to produce, when costs such as "
                "energy or wages rise, or when the money supply grows faster than output.",
                rel="The US Federal Reserve targets an inflation rate of 2 percent a year, measured by the "
                "personal consumption expenditures price index.",
                eval=("what inflation rate does the federal reserve target", "rel"),
            ),
            dict(
                key="bond_prices",
                query="why do bond prices fall when interest rates rise",
                pos="When market interest rates rise, newly issued bonds pay higher coupons, so existing bonds "
                "with lower coupons must fall in price until their yield matches the market.",
                amb="A bond's duration measures how sensitive its price is to changes in interest rates; longer "
                "duration means larger price swings.",
            ),
            dict(
                key="emergency_fund",
                query="how much should i keep in an emergency fund",
                pos="Financial planners commonly advise keeping three to six months of essential living expenses "
                "in an easily accessible emergency fund, such as a savings account.",
                fn="A rule of thumb is to set aside enough cash to cover between three and six months of rent, "
                "food and other necessary bills before investing.",
                rel="High-yield savings accounts at online banks often pay more interest than accounts at "
                "traditional branches.",
            ),
            dict(
                key="dividend",
                query="what is a dividend",
                pos="A dividend is a distribution of part of a company's profits to its shareholders, usually "
                "paid in cash each quarter and decided by the board of directors.",
                rel="The ex-dividend date is the cut-off: investors who buy the stock on or after it do not "
                "receive the next dividend payment.",
                eval=("what is the ex dividend date", "rel"),
            ),
            dict(
                key="capital_gains",
                query="how are long term capital gains taxed",
                pos="In the United States, gains on assets held longer than one year are taxed at long-term "
                "capital gains rates of 0%, 15% or 20%, depending on taxable income.",
                amb="Selling an investment at a loss can offset capital gains, and up to $3,000 of excess loss "
                "a year can be deducted against ordinary income.",
            ),
            dict(
                key="etf_vs_mutual",
                query="what is the difference between an etf and a mutual fund",
                pos="ETFs trade on an exchange throughout the day at market prices, while mutual fund shares are "
                "bought and sold once a day at the net asset value computed after the close.",
                rel="Many ETFs have lower expense ratios than actively managed mutual funds, although index "
                "mutual funds can be just as cheap.",
            ),
            dict(
                key="mortgage_rate",
                query="what is the difference between fixed and adjustable rate mortgages",
                pos="A fixed-rate mortgage keeps the same interest rate for the whole loan, while an "
                "adjustable-rate mortgage has a rate that resets periodically with a market index after an "
                "initial fixed period.",
                fn="With an ARM, the interest you pay changes once the introductory period ends and follows a "
                "benchmark rate; a fixed loan's rate never moves.",
                rel="Lenders typically want a debt-to-income ratio below about 43 percent before approving a mortgage.",
            ),
            dict(
                key="diversification",
                query="why is diversification important in investing",
                pos="Diversification spreads money across many assets whose returns do not move together, "
                "which lowers the volatility of a portfolio without necessarily lowering its expected return.",
                rel="Target-date funds shift their mix from stocks toward bonds automatically as the chosen "
                "retirement year approaches.",
            ),
            dict(
                key="stock_split",
                query="what happens in a stock split",
                pos="In a stock split a company issues more shares to existing shareholders, for example two for "
                "one, which lowers the price per share while leaving the company's market value unchanged.",
                amb="A reverse stock split combines shares, for example one new share for ten old ones, and is "
                "often used to keep a share price above an exchange's minimum listing price.",
            ),
            dict(
                key="401k_match",
                query="what is a 401k employer match",
                pos="An employer match is money a company adds to an employee's 401(k), such as 50 cents for "
                "every dollar the employee contributes up to 6 percent of salary.",
                rel="Withdrawing from a 401(k) before age 59 and a half usually triggers a 10 percent penalty on "
                "top of income tax.",
                eval=("what is the penalty for early 401k withdrawal", "rel"),
            ),
            dict(
                key="expense_ratio",
                query="what is an expense ratio",
                pos="A fund's expense ratio is the share of its assets deducted each year to cover management "
                "and operating costs; 0.10 percent means 1 dollar per 1,000 dollars invested.",
                rel="Front-end loads are sales charges some mutual funds take when you buy shares, separate from "
                "the annual operating costs.",
            ),
            dict(
                key="short_selling",
                query="how does short selling work",
                pos="A short seller borrows shares, sells them at today's price and later buys them back to "
                "return to the lender, profiting if the price has fallen in between.",
                amb="Short interest, the number of shares sold short as a share of the float, is watched as a "
                "sign of how many investors expect a stock to fall.",
            ),
        ],
    },
}

NEGATIVES_PER_QUERY = 10  # the entity's own passages plus other entities' passages, same topic


def build(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20260522)
    labels, corpus, eval_queries, qrels = [], [], [], []
    for subset, topic in TOPICS.items():
        pid = {}
        for e in topic["entities"]:
            for kind in ("pos", "fn", "amb", "rel"):
                if kind in e:
                    pid[(e["key"], kind)] = f"{subset}-{e['key']}-{kind}"
                    corpus.append({"_id": pid[(e["key"], kind)], "title": "", "text": e[kind]})
        lines = []
        for e in topic["entities"]:
            own = [k for k in ("fn", "amb", "rel") if k in e]
            others = [k for k in pid if k[0] != e["key"]]
            rng.shuffle(others)
            neg_keys = [(e["key"], k) for k in own] + others[: NEGATIVES_PER_QUERY - len(own)]
            rng.shuffle(neg_keys)
            qid = f"{subset}-{e['key']}"
            lines.append(
                {
                    "query_id": qid,
                    "query": e["query"],
                    "pos": [e["pos"]],
                    "pos_ids": [pid[(e["key"], "pos")]],
                    "neg": [TOPICS[subset]["entities"][_index(topic, k[0])][k[1]] for k in neg_keys],
                    "neg_ids": [pid[k] for k in neg_keys],
                    "prompt": topic["prompt"],
                    "type": "normal",
                }
            )
            for k in neg_keys:
                own_kind = k[1] if k[0] == e["key"] else None
                label = {"fn": "false_negative", "amb": "ambiguous"}.get(own_kind, "negative")
                text = topic["entities"][_index(topic, k[0])][k[1]]
                labels.append(
                    {
                        "subset": subset,
                        "query_id": qid,
                        "passage_id": pid[k],
                        "passage_key": passage_key(text),
                        "label": label,
                    }
                )
            if "eval" in e:
                question, kind = e["eval"]
                eid = f"{qid}-eval"
                eval_queries.append({"_id": eid, "text": question})
                qrels.append((eid, pid[(e["key"], kind)], 1))
        _write_jsonl(out / f"{subset}.jsonl", lines)
    _write_jsonl(out / "labels.jsonl", labels)
    beir = out / "beir"
    (beir / "qrels").mkdir(parents=True, exist_ok=True)
    _write_jsonl(beir / "corpus.jsonl", corpus)
    # Only held-out questions: no training query is in the eval set.
    _write_jsonl(beir / "queries.jsonl", eval_queries)
    with (beir / "qrels" / "test.tsv").open("w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q, d, s in qrels:
            fh.write(f"{q}\t{d}\t{s}\n")


def _index(topic: dict, key: str) -> int:
    return next(i for i, e in enumerate(topic["entities"]) if e["key"] == key)


def _write_jsonl(path: Path, rows: list) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    build()
    print(f"wrote {OUT}")
